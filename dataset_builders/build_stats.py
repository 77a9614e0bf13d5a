"""What a build wrote and left out: counts per task and source, score distributions, skips.

A :class:`BuildStats` grows with the number of distinct tasks, sources and skipped items, never
with the number of examples, so a streaming build keeps constant memory. It is saved next to
the shards it describes and the dataset card is rendered from it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from editforge.vocabulary import PERSPECTIVES, VIESCORE_SCORES

from .errors import ItemError

EDIT = "edit"
PAIR = "pair"


@dataclass
class Distribution:
    """Counts of values in unit-wide bins ``[low, low+1), ..., [high-1, high]`` plus count and mean."""

    low: int
    high: int
    bins: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0.0

    def __post_init__(self):
        if not self.bins:
            self.bins = [0] * (self.high - self.low + 1)

    def add(self, value: float) -> None:
        index = min(max(int(math.floor(value)) - self.low, 0), len(self.bins) - 1)
        self.bins[index] += 1
        self.count += 1
        self.total += float(value)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "bins": list(self.bins), "count": self.count, "total": self.total}

    @classmethod
    def from_dict(cls, data: dict) -> "Distribution":
        return cls(data["low"], data["high"], list(data["bins"]), data["count"], data["total"])


@dataclass
class BuildStats:
    kind: str = EDIT
    num_examples: int = 0
    tasks: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    with_mask: int = 0
    with_rewards: int = 0
    with_viescore: int = 0
    with_metrics: int = 0
    reward_scores: dict = field(default_factory=lambda: {p: Distribution(0, 5) for p in PERSPECTIVES})
    viescore_scores: dict = field(default_factory=lambda: {k: Distribution(0, 10) for k in VIESCORE_SCORES})
    labels: Counter = field(default_factory=Counter)
    themes: Counter = field(default_factory=Counter)
    skipped: list = field(default_factory=list)

    def add_example(self, example: dict) -> None:
        self.num_examples += 1
        self.sources[example["provenance"]["dataset"]] += 1
        if self.kind == PAIR:
            self.labels[f"{example['label_0']:g}"] += 1
            if example.get("theme") is not None:
                self.themes[example["theme"]] += 1
            return
        self.tasks[example.get("task") or "(none)"] += 1
        self.with_mask += example.get("mask_image") is not None
        self.with_metrics += example.get("metrics") is not None
        rewards = example.get("rewards")
        if rewards is not None:
            self.with_rewards += 1
            for perspective in PERSPECTIVES:
                self.reward_scores[perspective].add(rewards[perspective]["score"])
        vie = example.get("viescore")
        if vie is not None:
            self.with_viescore += 1
            for key in VIESCORE_SCORES:
                self.viescore_scores[key].add(vie[key])

    def add_skipped(self, error: ItemError) -> None:
        self.skipped.append(error.to_dict())

    @property
    def skipped_by_kind(self) -> Counter:
        return Counter(s["kind"] for s in self.skipped)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "num_examples": self.num_examples,
            "tasks": dict(self.tasks),
            "sources": dict(self.sources),
            "with_mask": self.with_mask,
            "with_rewards": self.with_rewards,
            "with_viescore": self.with_viescore,
            "with_metrics": self.with_metrics,
            "reward_scores": {k: d.to_dict() for k, d in self.reward_scores.items()},
            "viescore_scores": {k: d.to_dict() for k, d in self.viescore_scores.items()},
            "labels": dict(self.labels),
            "themes": dict(self.themes),
            "skipped": list(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "BuildStats":
        return cls(
            kind=data["kind"],
            num_examples=data["num_examples"],
            tasks=Counter(data["tasks"]),
            sources=Counter(data["sources"]),
            with_mask=data["with_mask"],
            with_rewards=data["with_rewards"],
            with_viescore=data["with_viescore"],
            with_metrics=data["with_metrics"],
            reward_scores={k: Distribution.from_dict(d) for k, d in data["reward_scores"].items()},
            viescore_scores={k: Distribution.from_dict(d) for k, d in data["viescore_scores"].items()},
            labels=Counter(data["labels"]),
            themes=Counter(data["themes"]),
            skipped=list(data["skipped"]),
        )
