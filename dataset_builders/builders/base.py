"""What every editforge builder shares: its configuration, the example loop, the canonical rows.

A source layout is a :class:`EditforgeBuilder` subclass that says how to walk the source
(:meth:`~EditforgeBuilder._iter_items`) and how to turn one raw item into a canonical row
(:meth:`~EditforgeBuilder._make_example`, using :meth:`~EditforgeBuilder.edit_example` or
:meth:`~EditforgeBuilder.pair_example`). The base class handles ``on_error`` and keeps the
:class:`~editforge.dataset_builders.build_stats.BuildStats` of the run in ``builder.stats``.

They are ordinary ``datasets`` builders and work in-process::

    builder = MagicBrush(data_dir="MagicBrush/", split="dev", source_files="data/dev-*.parquet")
    builder.download_and_prepare()
    ds = builder.as_dataset(split="dev")            # or builder.as_streaming_dataset(split="dev")

``editforge build-dataset`` (:func:`editforge.dataset_builders.build.build_dataset`) runs the
same conversion through :meth:`EditforgeBuilder.iter_examples`, writes resumable Parquet shards
and publishes them as a Hub dataset folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import datasets
from datasets.builder import Key

from editforge.errors import UsageError

from ..build_stats import EDIT, PAIR, BuildStats
from ..errors import BAD_FIELD, SIZE_MISMATCH, ItemError
from ..features import EDIT_FEATURES, PAIR_FEATURES, PAIR_LABELS
from ..images import ImageSource, load_image

logger = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("fail", "skip")


@dataclass
class EditforgeBuilderConfig(datasets.BuilderConfig):
    """Options every source layout takes.

    Args:
        data_dir: the source on disk (a folder, or the layout's main file).
        split: name of the split the examples are written to.
        on_error: ``"fail"`` stops at the first bad item; ``"skip"`` leaves it out and records why.
        provenance: the dataset name written to ``provenance.dataset`` (default: the source's Hub name).
    """

    split: str = "train"
    on_error: str = "fail"
    provenance: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        if self.on_error not in ON_ERROR_CHOICES:
            raise UsageError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {self.on_error!r}")


def _optional_text(value: Any, *, item_id: str, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ItemError(item_id, BAD_FIELD, f"expected text, got {type(value).__name__} {value!r}", field)


def _required_text(value: Any, *, item_id: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ItemError(item_id, BAD_FIELD, f"expected a non-empty string, got {value!r}", field)
    return value


class EditforgeBuilder(datasets.GeneratorBasedBuilder):
    """Base of the source-layout builders (see the module docstring)."""

    BUILDER_CONFIG_CLASS = EditforgeBuilderConfig
    KIND = EDIT
    # provenance.dataset when the configuration does not name one
    SOURCE_NAME = "unknown"
    DESCRIPTION = ""
    HOMEPAGE = ""

    stats: BuildStats

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.DESCRIPTION,
            homepage=self.HOMEPAGE,
            features=PAIR_FEATURES if self.KIND == PAIR else EDIT_FEATURES,
        )

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise UsageError(f"{type(self).__name__} needs data_dir: the source folder or file")
        source = Path(self.config.data_dir)
        if not source.exists():
            raise UsageError(f"the source {source} does not exist")
        return [datasets.SplitGenerator(name=self.config.split, gen_kwargs={"source": str(source)})]

    def _generate_examples(self, source: str):
        self.stats = BuildStats(kind=self.KIND)
        for key, item_id, raw in self._iter_items(Path(source)):
            example = self._convert(item_id, raw)
            if example is not None:
                yield key, example

    def iter_examples(self, source: Path, stats: BuildStats, skip: int = 0) -> Iterator[dict | None]:
        """Canonical rows of the source's items from item ``skip`` on, recorded in ``stats``.

        Yields one value per source item: the row, or None for an item left out with
        ``on_error="skip"``. ``skip`` resumes an interrupted build without converting again
        what it already wrote (see :mod:`editforge.dataset_builders.shard_writer`).
        """
        self.stats = stats
        for _, item_id, raw in self._iter_items(Path(source), skip=skip):
            yield self._convert(item_id, raw)

    def _convert(self, item_id: str, raw: Any) -> dict | None:
        try:
            example = self._make_example(item_id, raw)
        except ItemError as err:
            if self.config.on_error != "skip":
                raise
            logger.info("skipped %s", err)
            self.stats.add_skipped(err)
            return None
        self.stats.add_example(example)
        return example

    # -- what each layout implements ----------------------------------------------------------

    def _iter_items(self, source: Path, skip: int = 0) -> Iterator[tuple[Key, str, Any]]:
        """Yield ``(key, item_id, raw)`` for every item of the source from item ``skip`` on,
        cheaply (no image decoding), always in the same order.

        Raise UsageError for a problem with the whole source (unreadable file, missing column).
        """
        raise NotImplementedError

    def source_files(self, source: Path) -> list[Path]:
        """The files that define the source's items and their order (to tell when it changed)."""
        raise NotImplementedError

    def count_items(self, source: Path) -> int | None:
        """How many items the source has, when that is cheap to know (for the progress bar)."""
        return None

    def _make_example(self, item_id: str, raw: Any) -> dict:
        """Turn one raw item into a canonical row; raise ItemError for anything wrong with it."""
        raise NotImplementedError

    # -- canonical rows -----------------------------------------------------------------------

    @property
    def provenance_dataset(self) -> str:
        return self.config.provenance or self.SOURCE_NAME

    def edit_example(
        self,
        *,
        item_id: str,
        source_image: ImageSource,
        edited_image: ImageSource,
        instruction: Any,
        mask_image: ImageSource | None = None,
        source_caption: Any = None,
        target_caption: Any = None,
        task: Any = None,
        rewards: dict | None = None,
        metrics: dict | None = None,
        viescore: dict | None = None,
        provenance: dict | None = None,
    ) -> dict:
        """A row in :data:`EDIT_FEATURES`; images validated, converted and checked to match in size."""
        instruction = _required_text(instruction, item_id=item_id, field="instruction")
        source = load_image(source_image, item_id=item_id, field="source_image")
        edited = load_image(edited_image, item_id=item_id, field="edited_image")
        if edited.size != source.size:
            raise ItemError(
                item_id, SIZE_MISMATCH,
                f"the source image is {source.width}x{source.height} but the edited image is {edited.width}x{edited.height}",
                "edited_image",
            )
        mask = None
        if mask_image is not None:
            mask = load_image(mask_image, item_id=item_id, field="mask_image", mask=True)
            if mask.size != source.size:
                raise ItemError(
                    item_id, SIZE_MISMATCH,
                    f"the source image is {source.width}x{source.height} but the mask is {mask.width}x{mask.height}",
                    "mask_image",
                )
        return {
            "id": item_id,
            "source_image": source.feature_value(),
            "edited_image": edited.feature_value(),
            "mask_image": None if mask is None else mask.feature_value(),
            "instruction": instruction,
            "source_caption": _optional_text(source_caption, item_id=item_id, field="source_caption"),
            "target_caption": _optional_text(target_caption, item_id=item_id, field="target_caption"),
            "task": _optional_text(task, item_id=item_id, field="task"),
            "width": source.width,
            "height": source.height,
            "provenance": provenance or {"dataset": self.provenance_dataset, "original_id": item_id},
            "rewards": rewards,
            "metrics": metrics,
            "viescore": viescore,
        }

    def pair_example(
        self,
        *,
        item_id: str,
        prompt: Any,
        image_0: ImageSource,
        image_1: ImageSource,
        label_0: Any,
        theme: Any = None,
        subtopic: Any = None,
        contrast: Any = None,
        pair_id: Any = None,
    ) -> dict:
        """A row in :data:`PAIR_FEATURES`; ``label_0`` must be 1, 0 or 0.5."""
        prompt = _required_text(prompt, item_id=item_id, field="prompt")
        if isinstance(label_0, bool) or not isinstance(label_0, (int, float)) or float(label_0) not in PAIR_LABELS:
            raise ItemError(item_id, BAD_FIELD, f"label_0 must be 1, 0 or 0.5, got {label_0!r}", "label_0")
        first = load_image(image_0, item_id=item_id, field="image_0")
        second = load_image(image_1, item_id=item_id, field="image_1")
        return {
            "id": item_id,
            "prompt": prompt,
            "image_0": first.feature_value(),
            "image_1": second.feature_value(),
            "label_0": float(label_0),
            "theme": _optional_text(theme, item_id=item_id, field="theme"),
            "subtopic": _optional_text(subtopic, item_id=item_id, field="subtopic"),
            "contrast": _optional_text(contrast, item_id=item_id, field="contrast"),
            "pair_id": _optional_text(pair_id, item_id=item_id, field="pair_id"),
            "provenance": {"dataset": self.provenance_dataset, "original_id": item_id},
        }
