"""editforge manifests (``editforge synth``, ``editforge annotate``) as canonical edit triplets.

A line's ``rewards`` go to the ``rewards`` column when its ``judge.rubric`` is ``multi-reward``
and to the ``viescore`` column when it is ``viescore-edit`` (a line without ``judge`` is routed
by the shape of its rewards). ``rewards: null`` (a judgement that could not be obtained) stays
null. With ``rewards_from="ground_truth"`` the rewards come from a synthetic manifest's
``ground_truth`` instead. An optional ``metrics`` object fills the metrics column and an optional
``provenance`` object ``{dataset, original_id}`` is kept; otherwise the provenance is the
manifest's folder name and the line's id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from datasets.builder import Key

from editforge.errors import UsageError
from editforge.vocabulary import MULTI_REWARD, PERSPECTIVES, VIESCORE_EDIT

from ..errors import BAD_REWARD, ItemError
from ..manifest import manifest_path, read_manifest, resolve_image
from ..rewards import metrics, multi_reward, viescore
from .base import EditforgeBuilder, EditforgeBuilderConfig

REWARDS_FROM_CHOICES = ("rewards", "ground_truth")


@dataclass
class ManifestConfig(EditforgeBuilderConfig):
    """Args:
    rewards_from: ``"rewards"`` (the judge's annotation, default) or ``"ground_truth"`` (synthetic).
    """

    rewards_from: str = "rewards"

    def __post_init__(self):
        super().__post_init__()
        if self.rewards_from not in REWARDS_FROM_CHOICES:
            raise UsageError(f"rewards_from must be one of {', '.join(REWARDS_FROM_CHOICES)}, got {self.rewards_from!r}")


class Manifest(EditforgeBuilder):
    BUILDER_CONFIG_CLASS = ManifestConfig
    DESCRIPTION = "Edit triplets from an editforge manifest (JSON Lines, image paths relative to it)."

    def _iter_items(self, source: Path, skip: int = 0):
        path = manifest_path(source)
        for index, record in enumerate(read_manifest(path)):
            if index >= skip:
                yield Key(0, index), str(record["id"]), (path.parent, record)

    def source_files(self, source: Path) -> list[Path]:
        return [manifest_path(source)]

    def count_items(self, source: Path) -> int:
        with open(manifest_path(source), encoding="utf-8") as handle:
            return sum(1 for line in handle if line.strip())

    def _make_example(self, item_id: str, raw: tuple[Path, dict]) -> dict:
        base, record = raw
        rewards, vie = self._rewards(item_id, record)
        provenance = record.get("provenance")
        if isinstance(provenance, Mapping) and provenance.get("dataset") and provenance.get("original_id") is not None:
            provenance = {"dataset": str(provenance["dataset"]), "original_id": str(provenance["original_id"])}
        else:
            provenance = {"dataset": self.config.provenance or base.name, "original_id": item_id}
        return self.edit_example(
            item_id=item_id,
            source_image=resolve_image(record, "source_image", base),
            edited_image=resolve_image(record, "edited_image", base),
            mask_image=resolve_image(record, "mask_image", base),
            instruction=record["instruction"],
            source_caption=record.get("source_caption"),
            target_caption=record.get("target_caption"),
            task=record.get("task"),
            rewards=rewards,
            viescore=vie,
            metrics=metrics(record.get("metrics"), item_id=item_id),
            provenance=provenance,
        )

    def _rewards(self, item_id: str, record: dict) -> tuple[dict | None, dict | None]:
        """(rewards column, viescore column) of one manifest line."""
        if self.config.rewards_from == "ground_truth":
            return multi_reward(record.get("ground_truth"), item_id=item_id, field="ground_truth"), None
        value = record.get("rewards")
        if value is None:
            return None, None
        judge = record.get("judge")
        rubric = judge.get("rubric") if isinstance(judge, Mapping) else None
        if rubric is None:
            rubric = _rubric_by_shape(value)
            if rubric is None:
                raise ItemError(
                    item_id, BAD_REWARD,
                    "has no judge.rubric and its rewards are neither multi-reward nor viescore-edit shaped", "rewards",
                )
        if rubric == MULTI_REWARD:
            return multi_reward(value, item_id=item_id), None
        if rubric == VIESCORE_EDIT:
            return None, viescore(value, item_id=item_id)
        raise ItemError(item_id, BAD_REWARD, f"unknown judge.rubric {rubric!r}; expected {MULTI_REWARD} or {VIESCORE_EDIT}", "judge")


def _rubric_by_shape(value: Any) -> str | None:
    if isinstance(value, Mapping):
        if all(p in value for p in PERSPECTIVES):
            return MULTI_REWARD
        if "sc" in value and "pq" in value:
            return VIESCORE_EDIT
    return None
