"""The manifest: editforge's plain interchange format for edit triplets.

A manifest is a JSON Lines file, one triplet per line, with image paths relative to the file's
folder::

    {"id": ..., "source_image": "images/x_source.png", "edited_image": "images/x_edited.png",
     "instruction": ..., "source_caption": ..., "target_caption": ..., "task": ...,
     "mask_image": "images/x_mask.png" | null,
     "ground_truth": {"instruction_following": {"score": 5, "feedback": "None"}, ...}}

``editforge synth`` writes one; ``editforge annotate`` reads one and writes the same lines with
``rewards`` and ``judge`` added; ``editforge build-dataset --format manifest`` turns either into
a Hub dataset. Fields beyond the required ones are kept as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from editforge.errors import UsageError
from editforge.vocabulary import EDIT_IMAGE_COLUMNS

MANIFEST_NAME = "manifest.jsonl"
REQUIRED_FIELDS = ("id", "source_image", "edited_image", "instruction")
IMAGE_FIELDS = EDIT_IMAGE_COLUMNS


def manifest_path(path: str | os.PathLike) -> Path:
    """Accept a manifest file or a folder holding ``manifest.jsonl``."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise UsageError(f"no manifest at {path}")
    return path


def read_manifest(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a manifest, checking each for the required fields and unique ids.

    Raises UsageError naming the line and the problem on the first bad record.
    """
    path = manifest_path(path)
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise UsageError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            missing = [f for f in REQUIRED_FIELDS if record.get(f) in (None, "")]
            if missing:
                item = record.get("id", f"line {number}")
                raise UsageError(f"{path}:{number}: item {item!r} lacks {', '.join(missing)}")
            item_id = str(record["id"])
            if item_id in seen:
                raise UsageError(f"{path}:{number}: duplicate id {item_id!r}")
            seen.add(item_id)
            yield record


def resolve_image(record: dict, field: str, base_dir: str | os.PathLike) -> Path | None:
    """The absolute path of an image field (None when the field is null)."""
    value = record.get(field)
    if value is None:
        return None
    path = Path(value)
    return path if path.is_absolute() else Path(base_dir) / path


def write_manifest(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records atomically: the file appears complete or not at all. Returns the count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    count = 0
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n")
            count += 1
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return count
