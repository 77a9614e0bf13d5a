"""Where triplets come from: records that can be read again, and how to load their images.

The engine only sees a :class:`TripletSource`; the judge client never sees where images live.
A manifest (file, or folder holding ``manifest.jsonl``) is the source today; a dataset folder
becomes one more function returning a TripletSource.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from editforge.errors import UsageError

from ..manifest import IMAGE_FIELDS, MANIFEST_NAME, manifest_path, read_manifest, resolve_image


def _unchanged(record: dict, out_dir: Path) -> dict:
    return record


@dataclass
class TripletSource:
    """Triplets for the annotation engine.

    ``records()`` yields the records (dicts with at least ``id``, ``instruction``,
    ``source_image``, ``edited_image``) and can be called again for a second pass;
    ``load_image(record, field)`` returns what :func:`.images.prepare_image` accepts (a path,
    bytes, a datasets image dict or a PIL image); ``relocate(record, out_dir)`` rewrites a
    record for an output file in ``out_dir`` (so its image paths still resolve).
    """

    name: str
    records: Callable[[], Iterator[dict]]
    load_image: Callable[[dict, str], Any]
    total: int | None = None
    relocate: Callable[[dict, Path], dict] = _unchanged


def _image_fields(record: dict) -> list[str]:
    return [f for f in record if (f in IMAGE_FIELDS or f.endswith("_image")) and isinstance(record[f], str)]


def manifest_source(path: str | os.PathLike) -> TripletSource:
    """A manifest file, or a folder holding ``manifest.jsonl``; every record is checked first."""
    path = manifest_path(path)
    base_dir = path.parent
    total = sum(1 for _ in read_manifest(path))  # validates every line before any work is done

    def load_image(record: dict, field: str) -> Path:
        return resolve_image(record, field, base_dir)

    @functools.lru_cache(maxsize=8)
    def prefix_for(out_dir: Path) -> str | None:
        """The manifest folder as seen from ``out_dir`` (None: the same folder)."""
        here, there = base_dir.resolve(), out_dir.resolve()
        if here == there:
            return None
        try:
            return os.path.relpath(here, there)
        except ValueError:  # another drive (Windows): absolute paths
            return str(here)

    def relocate(record: dict, out_dir: Path) -> dict:
        prefix = prefix_for(Path(out_dir))
        if prefix is None:
            return record
        record = dict(record)
        for field in _image_fields(record):
            if not os.path.isabs(record[field]):
                record[field] = os.path.normpath(os.path.join(prefix, record[field]))
        return record

    return TripletSource(str(path), lambda: read_manifest(path), load_image, total, relocate)


def open_source(path: str | os.PathLike) -> TripletSource:
    """The triplet source at ``path``: a manifest file or a folder holding one."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if path.is_dir() and not (path / MANIFEST_NAME).is_file():
        raise UsageError(f"{path} holds no {MANIFEST_NAME}")
    return manifest_source(path)
