"""``build_dataset``: run a source layout's builder and publish the result as a Hub dataset folder.

    report = build_dataset("magicbrush", "MagicBrush/", "out/", config="magicbrush", split="dev",
                           source_files="data/dev-*.parquet")
    ds = load_dataset("out/", "magicbrush", split="dev")

The layout's builder converts the source item by item and :class:`~.shard_writer.ShardWriter`
streams the rows into Parquet shards (100 rows per row group, a new shard past
``max_shard_size``) in a hidden scratch folder inside ``out``, journalled so that a stopped build
resumes; only a complete build is moved in (:class:`~.hub_folder.HubFolder`). On a bad item
``on_error="fail"`` stops with the item's id and reason and publishes nothing; ``"skip"`` leaves
it out and the card counts it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from editforge.errors import UsageError

from .errors import ItemError
from .formats import builder_class
from .hub_folder import DEFAULT_CONFIG, DEFAULT_CONFIG_DIR, SCRATCH_PATTERNS, HubFolder, config_dir_name
from .shard_writer import ShardWriter, source_stamp

DEFAULT_MAX_SHARD_SIZE = "500MB"
CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
# Options every builder takes, set by build_dataset itself rather than passed through.
MANAGED_OPTIONS = {"name", "version", "data_dir", "data_files", "description", "split", "on_error"}


@dataclass
class BuildReport:
    """What one ``build_dataset`` call wrote."""

    format: str
    out: Path
    config: str
    split: str
    num_examples: int
    skipped: list[dict] = field(default_factory=list)
    tasks: dict = field(default_factory=dict)
    shards: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0  # source items an earlier, stopped run of the same build had written

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def skipped_by_kind(self) -> dict:
        return dict(Counter(s["kind"] for s in self.skipped))

    @property
    def num_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.shards)

    @property
    def examples_per_second(self) -> float:
        return self.num_examples / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        skipped = ""
        if self.skipped:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped_by_kind.items()))
            skipped = f"; skipped {self.num_skipped} ({kinds})"
        resumed = f"; resumed after {self.resumed_from} items written by an earlier run" if self.resumed_from else ""
        return (
            f"wrote {self.num_examples} examples to {self.out} (config {self.config!r}, split {self.split!r}, "
            f"{len(self.shards)} shard(s), {self.num_bytes / 1e6:.1f} MB) in {self.seconds:.1f}s{skipped}{resumed}"
        )


def check_names(config: str, split: str) -> None:
    if not CONFIG_NAME.match(config):
        raise UsageError(f"config name {config!r}: use letters, digits, '_', '-' or '.', starting with a letter or digit")
    if config == DEFAULT_CONFIG_DIR:
        raise UsageError(f"config name {config!r} is reserved: it is the folder of the 'default' config")
    if not SPLIT_NAME.match(split) or split == "all":
        raise UsageError(f"split name {split!r}: use letters, digits and '_' (and not 'all')")


def _builder_options(cls, options: dict) -> dict:
    """Check the layout-specific options against the builder's configuration class."""
    allowed = {f.name for f in dataclasses.fields(cls.BUILDER_CONFIG_CLASS)} - MANAGED_OPTIONS
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UsageError(
            f"{', '.join(unknown)} does not apply to this format (its options: {', '.join(sorted(allowed)) or 'none'})"
        )
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in options.items()}


def build_dataset(
    format: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    config: str = DEFAULT_CONFIG,
    split: str = "train",
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    on_error: str = "fail",
    progress: bool = True,
    **builder_options,
) -> BuildReport:
    """Read ``src`` in layout ``format`` and write it to the Hub-ready folder ``out`` as ``config``/``split``.

    ``builder_options`` are the layout's own options: ``rewards_from`` (manifest),
    ``images_dir`` (rewardedit20k), ``source_files`` (Parquet layouts), ``provenance`` (all).
    Raises UsageError (an ItemError for a bad item with ``on_error="fail"``); nothing is then
    published and ``out`` loads as it did before. Complete shards of a stopped build (error,
    Ctrl-C, kill) stay in a hidden scratch folder and the same call later resumes after them.
    """
    from datasets.utils.py_utils import convert_file_size_to_int
    from tqdm.auto import tqdm

    cls = builder_class(format)
    check_names(config, split)
    if on_error not in ("fail", "skip"):
        raise UsageError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    try:
        max_shard_bytes = convert_file_size_to_int(max_shard_size)
    except ValueError:
        raise UsageError(f"max_shard_size {max_shard_size!r}: expected a size such as 500MB or 1GiB") from None
    options = _builder_options(cls, builder_options)
    src, out = Path(src), Path(out)
    if not src.exists():
        raise UsageError(f"the source {src} does not exist")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    config_dir = out / config_dir_name(config)
    if config_dir.exists() and not config_dir.is_dir():
        raise UsageError(f"config {config!r} would be the folder {config_dir}, which is a file; choose another --config")

    folder = HubFolder(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = folder.staging_dir(config, split)
    builder = writer = None
    try:
        shutil.rmtree(staging / "cache", ignore_errors=True)
        builder = cls(
            cache_dir=str(staging / "cache"), config_name=config, data_dir=str(src),
            split=split, on_error=on_error, **options,
        )
        features = builder.info.features
        folder.check_features(config, features)
        signature = {
            "format": format, "options": options, "source": source_stamp(builder.source_files(src)),
            "features": features.to_dict(),
        }
        writer = ShardWriter(staging / "shards", features, max_shard_bytes, signature, builder.KIND)
        start = time.perf_counter()
        consumed = writer.consumed
        with tqdm(
            total=builder.count_items(src), initial=consumed, unit=" items", desc=f"build-dataset {config}/{split}",
            disable=not progress,
        ) as bar:
            for example in builder.iter_examples(src, writer.stats, skip=consumed):
                if example is not None:
                    writer.write(example)
                consumed += 1
                writer.item_done(consumed)
                bar.update(1)
        shards, num_bytes = writer.finish(consumed)
        seconds = time.perf_counter() - start
        stats = writer.stats
        if stats.num_examples == 0:
            left_out = f"; all {len(stats.skipped)} items were skipped" if stats.skipped else ""
            raise UsageError(f"the source {src} gave no examples{left_out}; nothing was written")
        from .dataset_card import render_card

        published = folder.publish(
            config=config, split=split, format=format, shards=shards, features=features,
            num_bytes=num_bytes, stats=stats,
            render_card=lambda records: render_card(records, title=out.resolve().name),
        )
    except BaseException as err:
        kept = writer.abandon() if writer is not None else 0
        if not kept:  # nothing worth resuming: leave no trace
            shutil.rmtree(out if created else staging, ignore_errors=True)
        if isinstance(err, ItemError) and writer is not None:
            resume = f"; the {kept} item(s) in complete shards are kept and a rerun continues after them" if kept else ""
            raise ItemError(
                err.item_id, err.kind,
                f"{err.reason}; the build stopped after {writer.stats.num_examples} good item(s) and published "
                f"nothing{resume} (--on-error skip leaves such items out)",
                err.field,
            ) from None
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return BuildReport(
        format=format, out=out, config=config, split=split, num_examples=stats.num_examples,
        skipped=list(stats.skipped), tasks=dict(stats.tasks), shards=published, seconds=seconds,
        resumed_from=writer.resumed_from,
    )


def push_folder_to_hub(out: str | os.PathLike, repo_id: str, private: bool | None = None) -> str:
    """Upload a built folder as the dataset repo ``repo_id`` (token from the environment / login).

    Parquet files of the repo that the folder no longer has are deleted in the same commit, so
    a rebuilt split with fewer shards does not keep stale ones. Returns the commit URL.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(out),
        ignore_patterns=list(SCRATCH_PATTERNS),
        delete_patterns=["*.parquet"],
        commit_message="Upload dataset built with editforge build-dataset",
    )
    return str(getattr(commit, "commit_url", commit))
