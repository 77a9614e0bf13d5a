"""Evaluation suites: the items a harness run edits, read from datasets in their own layouts.

A suite is a list of :class:`SuiteItem` (the canonical fields of an edit item: ``id``,
``instruction``, ``source_image``, ``task``, ``width``, ``height``, plus the tags a benchmark reports
by, such as GEdit-Bench's ``language`` and ``intersection``), the task groups in the order the
benchmark reports them, the subsets it reports separately, and its default rubric and judge.

``load_suite(spec)`` reads one of:

``synthetic[:n=24,seed=1000,sizes=32x32+48x32+32x48]``
    The synthetic world's held-out suite (``write_synthetic_dataset``, no imperfections): every
    edit kind at several aspect ratios, judged by the built-in oracle (multi-reward).
``gedit-bench[:PATH or Hub id][,language=en|cn]``
    GEdit-Bench in its Hub layout (``stepfun-ai/GEdit-Bench``: Parquet with ``key``,
    ``task_type``, ``instruction``, ``instruction_language``, ``input_image``,
    ``Intersection_exist``); 11 task groups; subsets EN / CN, full and intersection (viescore-edit).
``emu-edit[:PATH or Hub id][,split=test|validation]``
    The Emu Edit test set in its Hub layout (``facebook/emu_edit_test_set``); 7 task groups; its
    input and output captions feed ``--metrics``' caption metrics (CLIP-T, CLIPdir).
``magicbrush:PATH``
    MagicBrush Parquet shards, read by the dataset builder (``MagicBrush``); one group.
``synthetic-prompts[:n=24,seed=2000,sizes=32x32,styled=0]``
    Text-to-image: captions of random synthetic scenes as prompts (a ``styled`` share with a
    style), grouped by their number of shapes, judged by the alignment oracle (t2i-alignment).
``drawbench[:PATH or Hub id]``
    Text-to-image: DrawBench's 200 prompts in 11 categories (``sayakpaul/drawbench`` layout,
    ``Prompts`` / ``Category``), t2i-alignment.
``PATH``
    A triplet manifest (or a folder holding ``manifest.jsonl``) or a canonical dataset folder
    written by ``editforge build-dataset``; groups by its ``task`` column.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editforge.errors import UsageError
from editforge.vocabulary import MULTI_REWARD, T2I_ALIGNMENT, VIESCORE_EDIT

ALL = "all"  # the group (and subset) holding every item
EDIT, TEXT_TO_IMAGE = "edit", "text-to-image"  # what a suite's models do

# GEdit-Bench's task groups, in the order its paper's tables list them.
GEDIT_TASKS = ("background_change", "color_alter", "material_alter", "motion_change", "ps_human", "style_change",
               "subject-add", "subject-remove", "subject-replace", "text_change", "tone_transfer")
GEDIT_HUB_ID = "stepfun-ai/GEdit-Bench"
GEDIT_COLUMNS = ("key", "task_type", "instruction", "instruction_language", "input_image")
GEDIT_OPTIONAL = ("Intersection_exist", "input_image_raw")
SYNTHETIC_SIZES = ((32, 32), (48, 32), (32, 48))
# Emu Edit's seven task groups, in its paper's order.
EMU_EDIT_TASKS = ("background", "global", "style", "remove", "add", "local", "texture")
EMU_EDIT_HUB_ID = "facebook/emu_edit_test_set"
EMU_EDIT_COLUMNS = ("idx", "instruction", "image", "task", "input_caption", "output_caption")
EMU_EDIT_SPLITS = ("test", "validation")


@dataclass
class SuiteItem:
    """One item to edit. ``source_image`` (and ``mask_image``, the region to edit, white; None:
    free-form) is bytes or a path (checked when the item is read); ``tags`` are what the benchmark
    reports by; ``reference`` keeps the suite's other fields."""

    id: str
    instruction: str
    source_image: Any
    task: str | None = None
    width: int | None = None
    height: int | None = None
    tags: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    mask_image: Any = None

    @property
    def group(self) -> str:
        return self.task or ALL


@dataclass
class Suite:
    """Items plus how the benchmark reports them."""

    name: str
    items: list[SuiteItem]
    groups: tuple[str, ...] = ()  # the report's order (groups of the items not listed come after)
    subsets: dict[str, Callable[[SuiteItem], bool]] = field(default_factory=lambda: {ALL: lambda item: True})
    rubric: str = MULTI_REWARD
    judge: str | None = None  # "oracle": the built-in judge by default
    spec: str = ""
    kind: str = EDIT  # text-to-image: items are prompts (no source image), models generate

    def group_order(self) -> list[str]:
        present = {item.group for item in self.items}
        return [g for g in self.groups if g in present] + sorted(present - set(self.groups))

    def fingerprint(self) -> str:
        """Changes when the items do (kept in the run's state so a resumed run is the same run)."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(json.dumps([item.id, item.instruction, item.task], ensure_ascii=False).encode())
        return digest.hexdigest()[:16]


def _options(text: str) -> tuple[str | None, dict]:
    """``PATH,key=value,...`` or ``key=value,...`` -> (PATH or None, options)."""
    location, options = None, {}
    for part in (p for p in text.split(",") if p):
        if "=" in part and not os.path.exists(part):
            key, value = part.split("=", 1)
            options[key.strip()] = value.strip()
        elif location is None:
            location = part
        else:
            raise UsageError(f"suite option {part!r} is not key=value")
    return location, options


def _check_options(suite: str, options: dict, known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"suite {suite}: unknown option(s) {', '.join(unknown)}; expected {', '.join(known) or 'none'}")


# --- the synthetic world ------------------------------------------------------------------------


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        sizes = tuple(tuple(int(v) for v in part.lower().split("x")) for part in text.split("+") if part)
    except ValueError:
        sizes = ()
    if not sizes or any(len(s) != 2 or min(s) < 8 for s in sizes):
        raise UsageError(f"synthetic suite: sizes must look like 32x32+48x32 (width x height), got {text!r}")
    return sizes


def synthetic_suite(cache_dir: str | os.PathLike, *, n: int = 24, seed: int = 1000,
                    sizes: tuple[tuple[int, int], ...] = SYNTHETIC_SIZES, progress: bool = False) -> Suite:
    """The synthetic world's held-out suite: ``n`` perfect edits over every edit kind, split across
    ``sizes`` (one ``write_synthetic_dataset`` folder each, under ``cache_dir``, written once)."""
    from editforge.dataset_builders.manifest import read_manifest
    from editforge.dataset_builders.synthetic import TASKS, write_synthetic_dataset

    items = []
    for k, (width, height) in enumerate(sizes):
        count = n // len(sizes) + (k < n % len(sizes))
        if count == 0:
            continue
        folder = Path(cache_dir) / f"synthetic-n{count}-seed{seed + k}-{width}x{height}"
        manifest = folder / "manifest.jsonl"
        if not manifest.is_file():  # the manifest is written last: a folder with one is complete
            write_synthetic_dataset(folder, n=count, seed=seed + k, imperfect_rate=0.0, width=width, height=height,
                                    tasks=TASKS, progress=progress)
        for record in read_manifest(manifest):
            items.append(SuiteItem(
                id=f"{width}x{height}-{record['id']}", instruction=record["instruction"],
                source_image=folder / record["source_image"], task=record["task"], width=width, height=height,
                tags={"size": f"{width}x{height}"},
                mask_image=folder / record["mask_image"] if record.get("mask_image") else None,
                reference={"ideal_image": str(folder / record["ideal_image"]),
                           "source_caption": record.get("source_caption"), "target_caption": record.get("target_caption")},
            ))
    return Suite("synthetic", items, groups=TASKS, rubric=MULTI_REWARD, judge="oracle")


# --- text-to-image: the synthetic world's prompts, DrawBench ---------------------------------------


def synthetic_prompts_suite(*, n: int = 24, seed: int = 2000, sizes: tuple[tuple[int, int], ...] = ((32, 32),),
                            styled: float = 0.0) -> Suite:
    """Captions of random synthetic scenes (1-4 shapes with colours and places, a background, a style
    for a ``styled`` share) as text-to-image prompts, grouped by how many shapes they ask for, at
    ``sizes``; judged by the alignment oracle. The scene each prompt describes is kept as the
    reference."""
    from dataclasses import asdict

    import numpy as np

    from editforge.dataset_builders.synthetic.edits import STYLES, styled_caption
    from editforge.dataset_builders.synthetic.world import random_scene

    rng = np.random.default_rng(seed)
    items = []
    for k in range(n):
        scene = random_scene(rng)
        style = str(rng.choice(sorted(STYLES))) if rng.random() < styled else None
        width, height = sizes[k % len(sizes)]
        count = len(scene.shapes)
        items.append(SuiteItem(id=f"{width}x{height}-prompt{k:04d}", instruction=styled_caption(scene, style),
                               source_image=None, task=f"{count} shape{'s' if count > 1 else ''}", width=width,
                               height=height, tags={"size": f"{width}x{height}"},
                               reference={"scene": asdict(scene), "style": style}))
    return Suite("synthetic-prompts", items, groups=("1 shape", "2 shapes", "3 shapes", "4 shapes"),
                 rubric=T2I_ALIGNMENT, judge="oracle", kind=TEXT_TO_IMAGE)


DRAWBENCH_HUB_ID = "sayakpaul/drawbench"
# DrawBench's eleven categories (Imagen, arXiv 2205.11487), in its paper's order.
DRAWBENCH_CATEGORIES = ("Colors", "Conflicting", "Counting", "DALL-E", "Descriptions", "Gary Marcus et al.",
                        "Misspellings", "Positional", "Rare Words", "Reddit", "Text")


def drawbench_suite(location: str | None = None) -> Suite:
    """DrawBench in its Hub layouts (``sayakpaul/drawbench``: ``Prompts``, ``Category``; or ``prompts``,
    ``category`` with class labels), from a local copy or the Hub; 11 category groups; t2i-alignment."""
    from datasets import ClassLabel, load_dataset

    source = _hub_or_local(location or "", DRAWBENCH_HUB_ID)
    try:
        dataset = load_dataset(str(source))
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"cannot load DrawBench from {source}: {err}") from None
    split = next(iter(dataset.values()))
    columns = {name.lower(): name for name in split.column_names}
    prompt, category = columns.get("prompts") or columns.get("prompt"), columns.get("category")
    if prompt is None:
        raise UsageError(f"{source}: DrawBench needs a Prompts column (it has {', '.join(split.column_names)})")
    labels = split.features[category] if category is not None else None
    items = []
    for k, row in enumerate(split):
        group = row[category] if category is not None else None
        if isinstance(labels, ClassLabel) and group is not None:
            group = labels.int2str(group)
        if not isinstance(row[prompt], str) or not row[prompt].strip():
            raise UsageError(f"{source}: row {k} has no prompt")
        items.append(SuiteItem(id=f"{k:03d}", instruction=row[prompt], source_image=None, task=group))
    return Suite("drawbench", items, groups=DRAWBENCH_CATEGORIES, rubric=T2I_ALIGNMENT, kind=TEXT_TO_IMAGE)


# --- GEdit-Bench -------------------------------------------------------------------------------


def _hub_or_local(location: str, default_repo: str) -> Path:
    path = Path(location or default_repo)
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(location or default_repo, repo_type="dataset"))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, no access: one message
        raise UsageError(f"cannot find the dataset {location or default_repo!r} locally or on the Hub: {err}") from None


def gedit_bench_suite(location: str | os.PathLike | None = None, *, language: str | None = None) -> Suite:
    """GEdit-Bench from its Hub layout (a local copy or the Hub id, default stepfun-ai/GEdit-Bench)."""
    from editforge.dataset_builders.builders.parquet_source import (
        image_cell,
        iter_parquet_rows,
    )

    source = _hub_or_local(str(location) if location else "", GEDIT_HUB_ID)
    if language not in (None, "en", "cn"):
        raise UsageError(f"gedit-bench: language must be en or cn, got {language!r}")
    items, seen = [], set()
    for row in iter_parquet_rows(source, None, GEDIT_COLUMNS, GEDIT_OPTIONAL):
        values = row.values
        lang = str(values["instruction_language"]).lower()
        if language and lang != language:
            continue
        item_id = f"{lang}/{values['key']}"
        if item_id in seen:
            raise UsageError(f"{row.name}: item {item_id!r} appears twice")
        seen.add(item_id)
        image = values.get("input_image") if values.get("input_image") is not None else values.get("input_image_raw")
        items.append(SuiteItem(
            id=item_id, instruction=values["instruction"],
            source_image=image_cell(image, row.file.parent, item_id=item_id, field="input_image"),
            task=values["task_type"],
            tags={"language": lang, "intersection": bool(values.get("Intersection_exist"))},
        ))
    subsets = {}
    for lang in ("en", "cn"):
        if any(item.tags["language"] == lang for item in items):
            subsets[lang] = lambda item, lang=lang: item.tags["language"] == lang
            subsets[f"{lang}-intersection"] = (lambda item, lang=lang: item.tags["language"] == lang
                                               and item.tags["intersection"])
    return Suite("gedit-bench", items, groups=GEDIT_TASKS, subsets=subsets or {ALL: lambda item: True},
                 rubric=VIESCORE_EDIT)


# --- Emu Edit ------------------------------------------------------------------------------------


def emu_edit_suite(location: str | os.PathLike | None = None, *, split: str = "test") -> Suite:
    """The Emu Edit test set from its Hub layout (``facebook/emu_edit_test_set``: ``data/<split>-*.parquet``
    with ``idx``, ``instruction``, ``image``, ``task``, ``input_caption``, ``output_caption``); the
    captions are the source and target captions of ``--metrics``. Seven task groups."""
    from editforge.dataset_builders.builders.parquet_source import image_cell, iter_parquet_rows

    if split not in EMU_EDIT_SPLITS:
        raise UsageError(f"emu-edit: split must be one of {', '.join(EMU_EDIT_SPLITS)}, got {split!r}")
    source = _hub_or_local(str(location) if location else "", EMU_EDIT_HUB_ID)
    pattern = None if source.is_file() else f"data/{split}-*.parquet"
    items, seen = [], set()
    for row in iter_parquet_rows(source, pattern, EMU_EDIT_COLUMNS):
        values = row.values
        item_id = f"{split}/{values['idx']}"
        if item_id in seen:
            raise UsageError(f"{row.name}: item {item_id!r} appears twice")
        seen.add(item_id)
        items.append(SuiteItem(
            id=item_id, instruction=values["instruction"],
            source_image=image_cell(values["image"], row.file.parent, item_id=item_id, field="image"),
            task=values["task"],
            reference={"source_caption": values["input_caption"], "target_caption": values["output_caption"]},
        ))
    return Suite("emu-edit", items, groups=EMU_EDIT_TASKS, rubric=MULTI_REWARD)


# --- MagicBrush and the canonical layouts ------------------------------------------------------


def magicbrush_suite(location: str, *, cache_dir: str | os.PathLike = ".", source_files: str | None = None) -> Suite:
    """MagicBrush Parquet shards read by the dataset builder (canonical rows; the target image is kept
    as the reference)."""
    from editforge.dataset_builders.build_stats import BuildStats
    from editforge.dataset_builders.builders import MagicBrush

    source = _hub_or_local(location, "osunlp/MagicBrush")
    builder = MagicBrush(cache_dir=str(Path(cache_dir) / "builder-cache"), data_dir=str(source),
                         source_files=source_files)
    items = [_canonical_item(row) for row in builder.iter_examples(source, BuildStats(kind="edit")) if row is not None]
    return Suite("magicbrush", items, rubric=MULTI_REWARD)


def _canonical_item(row: dict) -> SuiteItem:
    image = row["source_image"]
    if isinstance(image, dict):
        image = image.get("bytes") if image.get("bytes") is not None else image.get("path")
    mask = row.get("mask_image")
    if isinstance(mask, dict):
        mask = mask.get("bytes") if mask.get("bytes") is not None else mask.get("path")
    return SuiteItem(id=str(row["id"]), instruction=row["instruction"], source_image=image, task=row.get("task"),
                     width=row.get("width"), height=row.get("height"), reference=_captions(row), mask_image=mask)


def _captions(row: dict) -> dict:
    return {name: row.get(name) for name in CAPTIONS if row.get(name)}


NEEDED_COLUMNS = ("id", "instruction", "source_image")
CAPTIONS = ("source_caption", "target_caption")  # what --metrics' caption metrics read


def folder_suite(path: str | os.PathLike) -> Suite:
    """A manifest (or a folder holding one) or a canonical dataset folder; groups by ``task``."""
    from editforge.dataset_builders.manifest import MANIFEST_NAME, manifest_path

    path = Path(path)
    if path.is_file() or (path / MANIFEST_NAME).is_file():
        manifest = manifest_path(path)
        items = []
        with open(manifest, encoding="utf-8") as lines:  # read here: the manifest reader also wants edited_image
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UsageError(f"{manifest}:{number}: not JSON ({err})") from None
                missing = [c for c in NEEDED_COLUMNS if not record.get(c)]
                if missing:
                    raise UsageError(f"{manifest}:{number} (item {record.get('id')!r}): the suite needs "
                                     f"{', '.join(missing)}")
                items.append(SuiteItem(id=str(record["id"]), instruction=record["instruction"],
                                       source_image=manifest.parent / record["source_image"], task=record.get("task"),
                                       width=record.get("width"), height=record.get("height"),
                                       reference=_captions(record),
                                       mask_image=manifest.parent / record["mask_image"] if record.get("mask_image")
                                       else None))
        return Suite(manifest.parent.name, items)
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    try:
        dataset = load_dataset(str(path), split="train")
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"cannot load the dataset at {path}: {err}") from None
    missing = [c for c in NEEDED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise UsageError(f"{path}: the suite needs the column(s) {', '.join(missing)} "
                         f"(it has {', '.join(dataset.column_names)})")
    dataset = dataset.cast_column("source_image", ImageFeature(decode=False))
    if "mask_image" in dataset.column_names:
        dataset = dataset.cast_column("mask_image", ImageFeature(decode=False))
    return Suite(path.name, [_canonical_item(row) for row in dataset])


SUITES = ("synthetic", "gedit-bench", "emu-edit", "magicbrush", "synthetic-prompts", "drawbench")


def load_suite(spec: str, *, cache_dir: str | os.PathLike = ".", progress: bool = False) -> Suite:
    """The suite named by ``spec`` (see the module docstring). Raises UsageError for an unknown name
    or a suite without the columns it needs."""
    name, _, rest = spec.partition(":")
    if name == "synthetic":
        location, options = _options(rest)
        _check_options(name, options, ("n", "seed", "sizes"))
        if location:
            raise UsageError(f"the synthetic suite takes no location, got {location!r}")
        try:
            n, seed = int(options.get("n", 24)), int(options.get("seed", 1000))
        except ValueError:
            raise UsageError(f"synthetic suite: n and seed must be integers, got {rest!r}") from None
        sizes = _sizes(options["sizes"]) if "sizes" in options else SYNTHETIC_SIZES
        suite = synthetic_suite(cache_dir, n=n, seed=seed, sizes=sizes, progress=progress)
    elif name == "synthetic-prompts":
        location, options = _options(rest)
        _check_options(name, options, ("n", "seed", "sizes", "styled"))
        if location:
            raise UsageError(f"the synthetic-prompts suite takes no location, got {location!r}")
        try:
            n, seed, styled = int(options.get("n", 24)), int(options.get("seed", 2000)), float(options.get("styled", 0))
        except ValueError:
            raise UsageError(f"synthetic-prompts suite: n and seed must be integers, styled a share, got {rest!r}") from None
        sizes = _sizes(options["sizes"]) if "sizes" in options else ((32, 32),)
        suite = synthetic_prompts_suite(n=n, seed=seed, sizes=sizes, styled=styled)
    elif name == "drawbench":
        location, options = _options(rest)
        _check_options(name, options, ())
        suite = drawbench_suite(location)
    elif name == "gedit-bench":
        location, options = _options(rest)
        _check_options(name, options, ("language",))
        suite = gedit_bench_suite(location, language=options.get("language"))
    elif name == "emu-edit":
        location, options = _options(rest)
        _check_options(name, options, ("split",))
        suite = emu_edit_suite(location, split=options.get("split", "test"))
    elif name == "magicbrush":
        location, options = _options(rest)
        _check_options(name, options, ("source_files",))
        suite = magicbrush_suite(location or "", cache_dir=cache_dir, source_files=options.get("source_files"))
    elif os.path.exists(spec):
        suite = folder_suite(spec)
    else:
        raise UsageError(f"unknown suite {spec!r}: expected one of {', '.join(SUITES)} (with :options), "
                         f"or a manifest / dataset folder")
    if not suite.items:
        raise UsageError(f"suite {spec!r} has no items")
    ids = [item.id for item in suite.items]
    if len(set(ids)) != len(ids):
        raise UsageError(f"suite {spec!r}: item ids are not unique")
    suite.spec = spec
    return suite
