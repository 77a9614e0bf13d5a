"""Edit triplets of the synthetic world, with controlled imperfections and ground-truth rewards.

Item ``i`` of seed ``s`` depends only on ``(s, i)``: the same seed gives byte-identical images
and manifest, and the first ten items of ``--n 100`` are the items of ``--n 10``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..manifest import MANIFEST_NAME, write_manifest
from . import rubric
from .edits import STYLES, TASKS, Edit, apply_edit, edit_mask, instruction_text, random_edit, styled_caption
from .imperfections import (
    INSTRUCTION_FAILURE_KINDS,
    apply_artefact,
    apply_detail_failure,
    apply_instruction_failure,
    detail_failures,
    instruction_failures,
)
from .world import Scene, random_scene, render

# Share of imperfect items that get a second failure, from another perspective.
SECOND_FAILURE_PROBABILITY = 0.3


@dataclass
class Triplet:
    """One generated edit: images as HxWx3 uint8 arrays, the mask as HxW bool (or None)."""

    id: str
    source: np.ndarray
    edited: np.ndarray
    ideal: np.ndarray
    mask: np.ndarray | None
    instruction: str
    source_caption: str
    target_caption: str
    task: str
    ground_truth: dict
    failures: list[str] = field(default_factory=list)
    edit: Edit | None = None
    source_scene: Scene | None = None


def _render_styled(scene: Scene, style: str | None, width: int, height: int) -> np.ndarray:
    image = render(scene, width, height)
    return image if style is None else STYLES[style].apply(image)


def generate_triplet(
    seed: int,
    index: int,
    width: int = 64,
    height: int = 64,
    imperfect_rate: float = 0.5,
    tasks: tuple[str, ...] | None = None,
    failure_weights: dict[str, float] | None = None,
    instruction_failure_kinds: tuple[str, ...] | None = None,
) -> Triplet:
    """Item ``index`` of the world with the given seed.

    ``tasks`` restricts the edit kinds (default: all six). ``failure_weights`` sets the relative
    odds of the perspective that fails on an imperfect item (default: equal).
    ``instruction_failure_kinds`` restricts the instruction-following failures to some of
    ``INSTRUCTION_FAILURE_KINDS`` (default: any that the edit allows, at equal odds).
    """
    rng = np.random.default_rng([seed, index])
    unknown = set(tasks or ()) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; expected some of {TASKS}")
    unknown = set(instruction_failure_kinds or ()) - set(INSTRUCTION_FAILURE_KINDS)
    if unknown:
        raise ValueError(f"unknown instruction failure(s) {sorted(unknown)}; expected some of {INSTRUCTION_FAILURE_KINDS}")
    while True:
        source = random_scene(rng)
        edit = random_edit(rng, source, tasks or TASKS)
        if edit is not None:
            break
    phrasing = int(rng.integers(0, 12))
    target, style = apply_edit(source, edit, rng)
    result, result_style = target, style
    artefact = level = None
    failures: list[str] = []

    if rng.random() < imperfect_rate:
        weights = failure_weights or {p: 1.0 for p in rubric.PERSPECTIVES}
        names = [p for p in rubric.PERSPECTIVES if weights.get(p, 0) > 0]
        probs = np.asarray([weights[p] for p in names], float)
        chosen = {str(rng.choice(names, p=probs / probs.sum()))}
        if len(names) > 1 and rng.random() < SECOND_FAILURE_PROBABILITY:
            rest = [p for p in names if p not in chosen]
            chosen.add(str(rng.choice(rest)))
        if "instruction_following" in chosen:
            options = instruction_failures(source, edit)
            if instruction_failure_kinds:
                options = [f for f in options if f in instruction_failure_kinds]
            for failure in rng.permutation(options) if options else ():
                outcome = apply_instruction_failure(rng, source, edit, target, style, str(failure))
                if outcome is not None:
                    result, result_style = outcome
                    failures.append(f"instruction_following:{failure}")
                    break
        if "detail_preserving" in chosen:
            for failure in rng.permutation(detail_failures(source, edit, result)):
                outcome = apply_detail_failure(rng, source, edit, result, str(failure))
                if outcome is not None:
                    result = outcome
                    failures.append(f"detail_preserving:{failure}")
                    break
        if "generation_quality" in chosen:
            # Blur is invisible on an image without edges: an empty, flat scene gets another artefact.
            kinds = rubric.ARTEFACT_KINDS if result.shapes else tuple(a for a in rubric.ARTEFACT_KINDS if a != "blur")
            artefact = str(rng.choice(kinds))
            level = str(rng.choice(rubric.ARTEFACT_LEVELS))
            failures.append(f"generation_quality:{artefact}:{level}")

    source_image = render(source, width, height)
    ideal = _render_styled(target, style, width, height)
    edited = _render_styled(result, result_style, width, height)
    if artefact is not None:
        edited = apply_artefact(rng, edited, artefact, level)

    return Triplet(
        id=f"synth-{seed}-{index:06d}",
        source=source_image,
        edited=edited,
        ideal=ideal,
        mask=edit_mask(source, edit, target, width, height),
        instruction=instruction_text(edit, phrasing),
        source_caption=styled_caption(source, None),
        target_caption=styled_caption(target, style),
        task=edit.task,
        ground_truth=rubric.judge(source, edit, result, result_style, artefact, level, width, height),
        failures=failures,
        edit=edit,
        source_scene=source,
    )


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    n: int,
    seed: int,
    imperfect_rate: float,
    width: int = 64,
    height: int = 64,
    progress: bool = True,
    **generate_kwargs,
) -> Path:
    """Write ``n`` triplets' images and ``manifest.jsonl`` under ``out_dir``. Returns the manifest.

    The manifest is written last and atomically, so a folder with a manifest is complete.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)

    def records():
        for index in tqdm(range(n), desc="synth", unit="triplet", disable=not progress):
            item = generate_triplet(seed, index, width, height, imperfect_rate, **generate_kwargs)
            paths = {
                "source_image": f"images/{item.id}_source.png",
                "edited_image": f"images/{item.id}_edited.png",
                "ideal_image": f"images/{item.id}_ideal.png",
                "mask_image": None if item.mask is None else f"images/{item.id}_mask.png",
            }
            _save_png(item.source, out_dir / paths["source_image"])
            _save_png(item.edited, out_dir / paths["edited_image"])
            _save_png(item.ideal, out_dir / paths["ideal_image"])
            if item.mask is not None:
                _save_png(item.mask.astype(np.uint8) * 255, out_dir / paths["mask_image"])
            yield {
                "id": item.id,
                "source_image": paths["source_image"],
                "edited_image": paths["edited_image"],
                "instruction": item.instruction,
                "source_caption": item.source_caption,
                "target_caption": item.target_caption,
                "task": item.task,
                "mask_image": paths["mask_image"],
                "ground_truth": item.ground_truth,
                "ideal_image": paths["ideal_image"],
                "failures": item.failures,
                "width": width,
                "height": height,
            }

    manifest = out_dir / MANIFEST_NAME
    write_manifest(manifest, records())
    return manifest
