"""``build_dataset``: run a source layout's builder and publish the result as a Hub dataset folder.

    report = build_dataset("magicbrush", "MagicBrush/", "out/", config="magicbrush", split="dev",
                           source_files="data/dev-*.parquet")
    ds = load_dataset("out/", "magicbrush", split="dev")

The builder streams the source into Parquet shards (100 rows per row group, a new shard past
``max_shard_size``) in a hidden scratch folder inside ``out``; only a complete build is moved in
(:class:`~.hub_folder.HubFolder`). On a bad item ``on_error="fail"`` stops with the item's id and
reason and publishes nothing; ``"skip"`` leaves it out and the card counts it.
"""

from __future__ import annotations

import contextlib
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
        return (
            f"wrote {self.num_examples} examples to {self.out} (config {self.config!r}, split {self.split!r}, "
            f"{len(self.shards)} shard(s), {self.num_bytes / 1e6:.1f} MB) in {self.seconds:.1f}s{skipped}"
        )


def _check_names(config: str, split: str) -> None:
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


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _generation_failure(err: BaseException) -> BaseException:
    """The error a builder raised, out of the wrapping ``datasets`` puts around it."""
    from datasets.exceptions import DatasetGenerationError

    while isinstance(err, DatasetGenerationError) and err.__cause__ is not None:
        err = err.__cause__
    return err


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
    Raises UsageError (an ItemError for a bad item with ``on_error="fail"``); ``out`` is then
    left as it was (and removed if this call created it).
    """
    from datasets.utils.py_utils import convert_file_size_to_int

    cls = builder_class(format)
    _check_names(config, split)
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

    created = not out.exists()
    folder = HubFolder(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = None
    builder = None
    try:
        staging = folder.staging_dir(config, split)
        builder = cls(
            cache_dir=str(staging / "cache"), config_name=config, data_dir=str(src),
            split=split, on_error=on_error, **options,
        )
        folder.check_features(config, builder.info.features)
        start = time.perf_counter()
        with _progress_bars(progress):
            builder.download_and_prepare(str(staging / "prepared"), file_format="parquet", max_shard_size=max_shard_bytes)
        seconds = time.perf_counter() - start
        stats = builder.stats
        if stats.num_examples == 0:
            left_out = f"; all {len(stats.skipped)} items were skipped" if stats.skipped else ""
            raise UsageError(f"the source {src} gave no examples{left_out}; nothing was written")
        shards = sorted((staging / "prepared").glob("*.parquet"))
        from .dataset_card import render_card

        published = folder.publish(
            config=config, split=split, format=format, shards=shards, features=builder.info.features,
            num_bytes=builder.info.splits[split].num_bytes, stats=stats,
            render_card=lambda records: render_card(records, title=out.resolve().name),
        )
    except Exception as err:
        cause = _generation_failure(err)
        if isinstance(cause, ItemError):
            done = getattr(builder, "stats", None)
            written = done.num_examples if done is not None else 0
            raise ItemError(
                cause.item_id, cause.kind,
                f"{cause.reason}; the build stopped after {written} good item(s) and published nothing "
                "(--on-error skip leaves such items out)",
                cause.field,
            ) from None
        if isinstance(cause, UsageError):
            raise cause from None
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created and not (out / "README.md").exists():
            shutil.rmtree(out, ignore_errors=True)
    return BuildReport(
        format=format, out=out, config=config, split=split, num_examples=stats.num_examples,
        skipped=list(stats.skipped), tasks=dict(stats.tasks), shards=published, seconds=seconds,
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
