"""The RewardEdit20K release: ``RewardEdit_20K.json`` joined to InstructPix2Pix sample folders.

``RewardEdit_20K.json`` maps an InstructPix2Pix folder name (``"0000123"``) to three judgements
``[{"Score", "Negative Prompt"}, ...]`` in the order instruction following, detail preserving,
generation quality. Each folder of the InstructPix2Pix release (``clip-filtered-dataset``) holds
``prompt.json`` (``{"input", "edit", "output"}``: source caption, instruction, target caption),
the image pair ``<seed>_0.jpg`` (source) and ``<seed>_1.jpg`` (edited), and usually
``metadata.jsonl`` with the CLIP similarities of each seed.

The reference loader pairs the images by glob order; here they are paired by name: the one
``<seed>_0`` / ``<seed>_1`` pair of the folder. A folder with several complete pairs is
reported as ambiguous (RewardEdit20K scores one edit per folder), never guessed. When
``prompt.json`` gives a list of instructions, the first is used. The metadata of the seed fill
``clip_sim_source`` / ``clip_sim_target`` / ``clip_sim_dir`` / ``clip_sim_image`` (from
``clip_sim_0`` / ``clip_sim_1`` / ``clip_sim_dir`` / ``clip_sim_image``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from datasets.builder import Key

from editforge.errors import UsageError

from ..errors import AMBIGUOUS, BAD_FIELD, MISSING_FILE, ItemError
from ..rewards import metrics, rewardedit_entry
from .base import EditforgeBuilder, EditforgeBuilderConfig

REWARD_FILE = "RewardEdit_20K.json"
PROMPT_FILE = "prompt.json"
METADATA_FILE = "metadata.jsonl"
PAIR_IMAGE = re.compile(r"^(?P<seed>\d+)_(?P<side>[01])\.(?:jpe?g|png)$", re.IGNORECASE)
# metadata.jsonl name -> canonical metric
METADATA_METRICS = {
    "clip_sim_0": "clip_sim_source",
    "clip_sim_1": "clip_sim_target",
    "clip_sim_dir": "clip_sim_dir",
    "clip_sim_image": "clip_sim_image",
}


@dataclass
class RewardEdit20KConfig(EditforgeBuilderConfig):
    """Args:
    data_dir: ``RewardEdit_20K.json`` or the folder holding it.
    images_dir: the folder of InstructPix2Pix sample folders (default: the JSON's folder).
    """

    images_dir: Optional[str] = None


class RewardEdit20K(EditforgeBuilder):
    BUILDER_CONFIG_CLASS = RewardEdit20KConfig
    SOURCE_NAME = "Gstar666/RewardEdit"
    HOMEPAGE = "https://github.com/bytedance/Multi-Reward-Editing"
    DESCRIPTION = "RewardEdit20K: InstructPix2Pix triplets with GPT-4o scores and failure texts from three perspectives."

    def source_files(self, source: Path) -> list[Path]:
        reward_file = source / REWARD_FILE if source.is_dir() else source
        if not reward_file.is_file():
            raise UsageError(f"no {REWARD_FILE} at {reward_file}")
        return [reward_file]

    def count_items(self, source: Path) -> int:
        return len(_read_scores(self.source_files(source)[0]))

    def _iter_items(self, source: Path, skip: int = 0):
        reward_file = self.source_files(source)[0]
        images_dir = Path(self.config.images_dir) if self.config.images_dir else reward_file.parent
        if not images_dir.is_dir():
            raise UsageError(f"the InstructPix2Pix folder {images_dir} does not exist")
        for index, (name, entry) in enumerate(_read_scores(reward_file).items()):
            if index >= skip:
                yield Key(0, index), str(name), (images_dir / str(name), entry)

    def _make_example(self, item_id: str, raw: tuple[Path, object]) -> dict:
        folder, entry = raw
        rewards = rewardedit_entry(entry, item_id=item_id)
        if not folder.is_dir():
            raise ItemError(item_id, MISSING_FILE, f"no InstructPix2Pix folder {folder}", "images")
        seed, source, edited = _image_pair(item_id, folder)
        prompt = _read_prompt(item_id, folder / PROMPT_FILE)
        instruction = prompt.get("edit")
        if isinstance(instruction, list):
            instruction = instruction[0] if instruction else None
        return self.edit_example(
            item_id=item_id,
            source_image=source,
            edited_image=edited,
            instruction=instruction,
            source_caption=prompt.get("input"),
            target_caption=prompt.get("output"),
            rewards=rewards,
            metrics=metrics(_seed_metadata(item_id, folder / METADATA_FILE, seed), item_id=item_id, field=METADATA_FILE),
        )


def _read_scores(reward_file: Path) -> dict:
    try:
        with open(reward_file, encoding="utf-8") as handle:
            scores = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{reward_file}: not readable JSON ({err})") from None
    if not isinstance(scores, dict):
        raise UsageError(f"{reward_file}: expected an object keyed by folder name, got {type(scores).__name__}")
    return scores


def _image_pair(item_id: str, folder: Path) -> tuple[str, Path, Path]:
    """The folder's single ``<seed>_0`` / ``<seed>_1`` pair: (seed, source path, edited path)."""
    sides: dict[str, dict[str, Path]] = {}
    for path in folder.iterdir():
        match = PAIR_IMAGE.match(path.name)
        if match:
            sides.setdefault(match["seed"], {})[match["side"]] = path
    complete = sorted(seed for seed, pair in sides.items() if set(pair) == {"0", "1"})
    if not complete:
        halves = ", ".join(sorted(p.name for pair in sides.values() for p in pair.values()))
        found = f" (found only {halves})" if halves else ""
        raise ItemError(item_id, MISSING_FILE, f"no <seed>_0.jpg / <seed>_1.jpg image pair in {folder}{found}", "images")
    if len(complete) > 1:
        raise ItemError(
            item_id, AMBIGUOUS,
            f"{folder} holds {len(complete)} image pairs (seeds {', '.join(complete)}); RewardEdit20K scores one",
            "images",
        )
    seed = complete[0]
    return seed, sides[seed]["0"], sides[seed]["1"]


def _read_prompt(item_id: str, path: Path) -> dict:
    if not path.is_file():
        raise ItemError(item_id, MISSING_FILE, f"{path} does not exist", PROMPT_FILE)
    try:
        prompt = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ItemError(item_id, BAD_FIELD, f"{path} is not valid JSON ({err})", PROMPT_FILE) from None
    if not isinstance(prompt, dict):
        raise ItemError(item_id, BAD_FIELD, f"{path} must hold an object with input, edit, output", PROMPT_FILE)
    return prompt


def _seed_metadata(item_id: str, path: Path, seed: str) -> dict | None:
    """The canonical metrics recorded for ``seed`` in the folder's metadata.jsonl (None without one)."""
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ItemError(item_id, BAD_FIELD, f"{path} is not valid JSON Lines ({err})", METADATA_FILE) from None
    for record in records:
        if isinstance(record, dict) and str(record.get("seed")) == seed:
            return {canonical: record.get(name) for name, canonical in METADATA_METRICS.items()}
    return None
