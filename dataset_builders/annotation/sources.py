"""Where triplets come from: records that can be read again, and how to load their images.

The engine only sees a :class:`TripletSource`; the judge client never sees where images live.
Two sources exist: a manifest (file, or folder holding ``manifest.jsonl``) and a dataset in
editforge's canonical features (a folder written by ``editforge build-dataset``, read with
``load_dataset``). The output of either is a manifest, so ``build-dataset --format manifest``
turns annotations back into a dataset.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from editforge.errors import UsageError
from editforge.vocabulary import EDIT_IMAGE_COLUMNS

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


def file_stem(item_id: str) -> str:
    """A file-name-safe, collision-free stem for an item id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id)[:80]
    return safe if safe == item_id else f"{safe}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"


def _extension(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def dataset_source(path: str | os.PathLike, config: str | None = None, split: str = "train") -> TripletSource:
    """A canonical edit dataset (a ``build-dataset`` folder) as triplets.

    Images are read as the stored bytes (nothing re-encoded). The output manifest needs files,
    so each item's images are written once, beside the output file, under
    ``<dataset>-<config>-<split>_images/``, and the output lines point there.
    """
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    try:
        dataset = load_dataset(str(path), config, split=split)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"cannot load the dataset at {path} (config {config!r}, split {split!r}): {err}") from None
    missing = [c for c in ("id", "instruction", "source_image", "edited_image") if c not in dataset.column_names]
    if missing:
        raise UsageError(f"{path} is not an edit-triplet dataset: it lacks {', '.join(missing)}")
    image_columns = [c for c in EDIT_IMAGE_COLUMNS if c in dataset.column_names]
    for column in image_columns:
        dataset = dataset.cast_column(column, ImageFeature(decode=False))
    ids = dataset["id"]
    if len(set(ids)) != len(ids):
        raise UsageError(f"{path}: item ids are not unique")
    position = {item_id: i for i, item_id in enumerate(ids)}
    scalar_columns = [c for c in dataset.column_names if c not in image_columns]

    def records() -> Iterator[dict]:
        for row in dataset:  # one read of each row; images stay undecoded bytes
            record = {column: row[column] for column in scalar_columns}
            for column in image_columns:  # placeholders until relocate() writes the files
                record[column] = None if row[column] is None else f"{column}:{record['id']}"
            yield record

    def image_bytes(record: dict, field: str) -> bytes:
        value = dataset[position[record["id"]]][field]
        if value is None:
            raise UsageError(f"item {record['id']!r} has no {field}")
        return value["bytes"] if value.get("bytes") is not None else Path(value["path"]).read_bytes()

    def relocate(record: dict, out_dir: Path) -> dict:
        record = dict(record)
        folder_name = f"{source_name}_images"
        for field in image_columns:
            if record.get(field) is None:
                continue
            data = image_bytes(record, field)
            relative = Path(folder_name) / f"{file_stem(record['id'])}_{field}{_extension(data)}"
            target = Path(out_dir) / relative
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".partial")
                partial.write_bytes(data)
                os.replace(partial, target)
            record[field] = relative.as_posix()
        return record

    source_name = f"{Path(path).resolve().name}-{config or 'default'}-{split}"
    return TripletSource(str(path), records, image_bytes, len(dataset), relocate)


def _is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "README.md").is_file() or any(path.rglob("*.parquet")))


def open_source(path: str | os.PathLike, config: str | None = None, split: str = "train") -> TripletSource:
    """The triplet source at ``path``: a manifest file, a folder holding one, or a canonical
    dataset folder (``config``/``split`` choose its part)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if path.is_dir() and not (path / MANIFEST_NAME).is_file():
        if _is_dataset_folder(path):
            return dataset_source(path, config, split)
        raise UsageError(f"{path} holds neither a {MANIFEST_NAME} nor a dataset")
    return manifest_source(path)
