"""A Hub-ready dataset folder: Parquet shards per config and split, and the README that names them.

Layout (the one ``Dataset.push_to_hub`` writes)::

    OUT/README.md                              YAML `configs:` + `dataset_info`, then the card
                                               (the generated part between markers; text people
                                               add around it and other YAML keys are kept)
    OUT/data/train-00000-of-00002.parquet      config "default"
    OUT/<config>/<split>-00000-of-00001.parquet other configs
    OUT/<config dir>/.editforge-<split>.json   what the build of that split wrote and skipped

so ``load_dataset(OUT, config)`` and ``load_dataset(OUT, config, streaming=True)`` read it, and
``huggingface_hub.upload_folder`` publishes it as it is.

Publishing one (config, split) never exposes half a dataset. The new shards are assembled in a
hidden folder next to the config's folder (the config's other splits hard-linked in), and the
two folders are swapped with renames; the README, rewritten atomically last, is the commit
point. A crash leaves either the old split, the new complete split, or a config whose folder is
missing (which does not load at all); a first build into an empty folder becomes visible with a
single rename.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from datasets import Features
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from filelock import FileLock
from huggingface_hub import DatasetCard, DatasetCardData

from editforge.errors import UsageError

from .build_stats import BuildStats

README_NAME = "README.md"
DEFAULT_CONFIG = "default"
DEFAULT_CONFIG_DIR = "data"
HIDDEN_PREFIX = ".editforge-"
LOCK_NAME = ".editforge.lock"
# Scratch folders of builds in progress: never part of a published dataset.
# The generated part of the card sits between these; text around them is the user's and is kept.
CARD_BEGIN = "<!-- editforge build-dataset: generated, rewritten by every build -->"
CARD_END = "<!-- editforge build-dataset: end of generated text -->"
SCRATCH_PATTERNS = (".editforge-staging-*", ".editforge-new-*", ".editforge-trash-*", LOCK_NAME)


def config_dir_name(config: str) -> str:
    return DEFAULT_CONFIG_DIR if config == DEFAULT_CONFIG else config


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def stats_name(split: str) -> str:
    return f"{HIDDEN_PREFIX}{split}.json"


def _belongs_to_split(file_name: str, split: str) -> bool:
    return (file_name.startswith(f"{split}-") and file_name.endswith(".parquet")) or file_name == stats_name(split)


def merge_card_text(existing: str, generated: str) -> str:
    """The README text with the generated part replaced (or appended); what people wrote is kept."""
    block = f"{CARD_BEGIN}\n{generated.strip()}\n{CARD_END}\n"
    if CARD_BEGIN in existing and CARD_END in existing:
        before, rest = existing.split(CARD_BEGIN, 1)
        after = rest.split(CARD_END, 1)[1]
        return before + block + after.lstrip("\n")
    if existing.strip():
        return existing.rstrip() + "\n\n" + block
    return block


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{HIDDEN_PREFIX}{path.name}.{uuid.uuid4().hex}.partial")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class SplitRecord:
    """One published split as the card describes it."""

    config: str
    split: str
    format: str
    num_examples: int
    num_shards: int
    stats: BuildStats


class HubFolder:
    """Read and update a Hub-ready dataset folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # -- reading ------------------------------------------------------------------------------

    def _card(self) -> tuple[DatasetCardData, str]:
        """The README's YAML header and its text (empty for a folder without README)."""
        readme = self.root / README_NAME
        if not readme.is_file():
            return DatasetCardData(), ""
        try:
            card = DatasetCard.load(readme)
        except Exception as err:  # malformed YAML and the like, from huggingface_hub
            raise UsageError(f"{readme}: cannot read its YAML header ({err})") from None
        return card.data, card.text

    def card_data(self) -> DatasetCardData:
        return self._card()[0]

    def infos(self) -> DatasetInfosDict:
        return DatasetInfosDict.from_dataset_card_data(self.card_data())

    def metadata_configs(self) -> MetadataConfigs:
        return MetadataConfigs.from_dataset_card_data(self.card_data())

    def check_features(self, config: str, features: Features) -> None:
        """Refuse to put rows of other features next to an existing config's splits."""
        info = self.infos().get(config)
        if info is not None and info.features is not None and info.features != features:
            raise UsageError(
                f"config {config!r} in {self.root} holds rows with other features "
                f"(columns {', '.join(info.features)}); build into another --config"
            )

    def split_records(self, configs: MetadataConfigs | None = None) -> list[SplitRecord]:
        """Every split the README (or ``configs``) lists, with the stats its build saved."""
        records = []
        configs = self.metadata_configs() if configs is None else configs
        for config, metadata in sorted(configs.items()):
            folder = self.root / config_dir_name(config)
            for entry in metadata.get("data_files", []):
                path = folder / stats_name(entry["split"])
                if not path.is_file():
                    continue
                saved = json.loads(path.read_text(encoding="utf-8"))
                stats = BuildStats.from_dict(saved["stats"])
                records.append(
                    SplitRecord(config, entry["split"], saved["format"], stats.num_examples, saved["num_shards"], stats)
                )
        return records

    # -- writing ------------------------------------------------------------------------------

    def staging_dir(self, config: str, split: str) -> Path:
        """The hidden scratch folder of the build of ``config``/``split`` (kept across runs to resume)."""
        path = self.root / f"{HIDDEN_PREFIX}staging-{config}-{split}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(
        self,
        *,
        config: str,
        split: str,
        format: str,
        shards: list[Path],
        features: Features,
        num_bytes: int,
        stats: BuildStats,
        render_card,
    ) -> list[Path]:
        """Move ``shards`` in as ``config``/``split`` and rewrite the README. Returns the shard paths.

        ``render_card(records) -> str`` renders the card body from the published splits' records.
        """
        dir_name = config_dir_name(config)
        final = self.root / dir_name
        with FileLock(str(self.root / LOCK_NAME)):
            self.check_features(config, features)
            fresh = self.root / f"{HIDDEN_PREFIX}new-{dir_name}"
            if fresh.exists():
                shutil.rmtree(fresh)
            fresh.mkdir()
            if final.is_dir():
                for existing in final.iterdir():
                    if existing.is_file() and not _belongs_to_split(existing.name, split):
                        _link_or_copy(existing, fresh / existing.name)
            names = [shard_name(split, i, len(shards)) for i in range(len(shards))]
            for shard, name in zip(shards, names):
                os.replace(shard, fresh / name)
            saved = {"format": format, "num_shards": len(shards), "stats": stats.to_dict()}
            (fresh / stats_name(split)).write_text(json.dumps(saved, indent=1), encoding="utf-8")

            trash = None
            if final.exists():
                trash = self.root / f"{HIDDEN_PREFIX}trash-{dir_name}-{uuid.uuid4().hex[:8]}"
                os.rename(final, trash)
            os.rename(fresh, final)

            self._write_readme(config, split, dir_name, features, num_bytes, stats.num_examples, render_card)
            if trash is not None:
                shutil.rmtree(trash)
            for stale in self.root.glob(f"{HIDDEN_PREFIX}trash-{dir_name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        return [final / name for name in names]

    def _write_readme(self, config, split, dir_name, features, num_bytes, num_examples, render_card) -> None:
        card_data, text = self._card()
        infos = DatasetInfosDict.from_dataset_card_data(card_data)
        configs = MetadataConfigs.from_dataset_card_data(card_data)

        old = infos.get(config)
        splits = SplitDict()
        if old is not None and old.splits:
            for name, info in old.splits.items():
                if name != split:
                    splits.add(SplitInfo(name=name, num_bytes=info.num_bytes, num_examples=info.num_examples))
        splits.add(SplitInfo(name=split, num_bytes=num_bytes, num_examples=num_examples))
        download_size = sum(p.stat().st_size for p in (self.root / dir_name).glob("*.parquet"))
        infos[config] = DatasetInfo(
            config_name=config,
            features=features,
            splits=splits,
            download_size=download_size,
            dataset_size=sum(s.num_bytes for s in splits.values()),
        )

        data_files = [e for e in configs.get(config, {}).get("data_files", []) if e["split"] != split]
        data_files.append({"split": split, "path": f"{dir_name}/{split}-*"})
        configs[config] = {"data_files": sorted(data_files, key=lambda e: e["split"])}

        card_data.pop("dataset_info", None)
        card_data.pop("configs", None)
        DatasetInfosDict(sorted(infos.items())).to_dataset_card_data(card_data)
        MetadataConfigs(configs).to_dataset_card_data(card_data)
        # the body describes what is on disk now, including the split just moved in
        body = merge_card_text(text, render_card(self.split_records(configs)))
        _write_atomically(self.root / README_NAME, f"---\n{card_data.to_yaml()}\n---\n\n{body}")
