"""Reading a canonical edit dataset and publishing rows derived from it (metrics, filtering).

:func:`load_edit_dataset` opens a dataset folder written by ``build-dataset`` (or a Hub id) with
``load_dataset``, images left as stored bytes. :func:`publish_rows` writes rows through the same
journalled :class:`~editforge.dataset_builders.shard_writer.ShardWriter` and
:class:`~editforge.dataset_builders.hub_folder.HubFolder` as ``build-dataset``: a stopped write
resumes after its complete shards, and only a complete split is moved into the folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from editforge.errors import UsageError
from editforge.vocabulary import EDIT_IMAGE_COLUMNS

from ..build import check_names
from ..build_stats import EDIT
from ..errors import ItemError
from ..features import EDIT_FEATURES
from ..hub_folder import DEFAULT_CONFIG, HubFolder, config_dir_name
from ..shard_writer import ShardWriter
from .card import card_renderer, save_section

DEFAULT_MAX_SHARD_SIZE = "500MB"


def load_edit_dataset(path: str | os.PathLike, config: str | None = None, split: str = "train",
                      cache_dir: str | None = None):
    """The split as a ``datasets.Dataset`` in the canonical edit features, images undecoded."""
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    try:
        dataset = load_dataset(str(path), config, split=split, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"cannot load the dataset at {path} (config {config!r}, split {split!r}): {err}") from None
    if dataset.features != EDIT_FEATURES:
        missing = [c for c in EDIT_FEATURES if c not in dataset.features]
        other = [c for c in EDIT_FEATURES if c in dataset.features and dataset.features[c] != EDIT_FEATURES[c]]
        extra = [c for c in dataset.features if c not in EDIT_FEATURES]
        detail = "; ".join(part for part in (
            missing and f"missing {', '.join(missing)}", other and f"other types for {', '.join(other)}",
            extra and f"extra columns {', '.join(extra)}") if part)
        raise UsageError(f"{path} (config {config!r}, split {split!r}) is not in editforge's canonical edit features "
                         f"({detail}); convert it with 'editforge build-dataset' first")
    for column in EDIT_IMAGE_COLUMNS:
        dataset = dataset.cast_column(column, ImageFeature(decode=False))
    return dataset


def check_output(out: str | os.PathLike, config: str, split: str) -> Path:
    out = Path(out)
    check_names(config, split)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    config_dir = out / config_dir_name(config)
    if config_dir.exists() and not config_dir.is_dir():
        raise UsageError(f"config {config!r} would be the folder {config_dir}, which is a file")
    return out


def publish_rows(
    out: Path,
    *,
    config: str,
    split: str,
    kind: str,
    rows: Callable[[int], Iterator[dict | ItemError]],
    total: int,
    signature: dict,
    section: Callable[[], dict],
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    progress: bool = True,
    desc: str | None = None,
):
    """Write ``rows(skip)`` (canonical rows, with image dicts of bytes, or ItemError for a left-out
    item) as ``config``/``split`` of ``out``; ``section()`` gives the card section's data once
    every row is written. Returns ``(published shard paths, BuildStats)``.

    The scratch folder (and what the caller keeps in it) is removed only after a publish.
    """
    from datasets.utils.py_utils import convert_file_size_to_int
    from tqdm.auto import tqdm

    try:
        max_shard_bytes = convert_file_size_to_int(max_shard_size)
    except ValueError:
        raise UsageError(f"max_shard_size {max_shard_size!r}: expected a size such as 500MB or 1GiB") from None
    folder = HubFolder(out)
    folder.check_features(config, EDIT_FEATURES)
    staging = folder.staging_dir(config, split)
    writer = ShardWriter(staging / "shards", EDIT_FEATURES, max_shard_bytes, signature, EDIT)
    consumed = writer.consumed
    try:
        with tqdm(total=total, initial=consumed, unit=" items", desc=desc or f"{kind} {config}/{split} (write)",
                  disable=not progress) as bar:
            for row in rows(consumed):
                if isinstance(row, ItemError):
                    writer.stats.add_skipped(row)
                else:
                    writer.write(row)
                    writer.stats.add_example(row)
                consumed += 1
                writer.item_done(consumed)
                bar.update(1)
        shards, num_bytes = writer.finish(consumed)
        data = section()
        published = folder.publish(
            config=config, split=split, format=kind, shards=shards, features=EDIT_FEATURES, num_bytes=num_bytes,
            stats=writer.stats, render_card=card_renderer(out, (config, split, data)),
        )
    except BaseException:
        writer.abandon()
        raise
    save_section(out, config, split, data)
    shutil.rmtree(staging, ignore_errors=True)
    return published, writer.stats


__all__ = ["DEFAULT_CONFIG", "DEFAULT_MAX_SHARD_SIZE", "check_output", "load_edit_dataset", "publish_rows"]
