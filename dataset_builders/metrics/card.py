"""What the dataset card says about metrics and filtering: histograms, models, thresholds, counts.

``editforge metrics`` and ``editforge filter`` publish their output through
:class:`~editforge.dataset_builders.hub_folder.HubFolder` with the usual card
(:func:`~editforge.dataset_builders.dataset_card.render_card`); this module appends one more
section per split they wrote. The section's data is saved beside the split's shards as
``<config dir>/.editforge-metrics-<split>.json``, so a later publish into the same folder
renders it again.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from editforge.vocabulary import METRIC_NAMES

from ..hub_folder import HIDDEN_PREFIX, config_dir_name

# Histogram bins: below 0, then ten bins of 0.1 from 0 to 1 (cosines and SSIM lie in [-1, 1]).
BIN_LABELS = ["<0"] + [f"{i / 10:.1f}" for i in range(10)]


def section_path(root: str | os.PathLike, config: str, split: str) -> Path:
    return Path(root) / config_dir_name(config) / f"{HIDDEN_PREFIX}metrics-{split}.json"


@dataclass
class MetricHistogram:
    """Counts of one metric's values in :data:`BIN_LABELS` bins, nulls, mean, min and max."""

    bins: list[int] = field(default_factory=lambda: [0] * len(BIN_LABELS))
    nulls: int = 0
    count: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None

    def add(self, value) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            self.nulls += 1
            return
        value = float(value)
        index = 0 if value < 0 else min(int(math.floor(value * 10)) + 1, len(BIN_LABELS) - 1)
        self.bins[index] += 1
        self.count += 1
        self.total += value
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def to_dict(self) -> dict:
        return {"bins": self.bins, "nulls": self.nulls, "count": self.count, "total": self.total,
                "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, data: dict) -> "MetricHistogram":
        return cls(list(data["bins"]), data["nulls"], data["count"], data["total"], data["low"], data["high"])


def histograms() -> dict[str, MetricHistogram]:
    return {name: MetricHistogram() for name in METRIC_NAMES}


def add_metrics(hists: dict[str, MetricHistogram], metrics: dict | None) -> None:
    for name, hist in hists.items():
        hist.add(None if metrics is None else metrics.get(name))


def histogram_table(hists: dict[str, MetricHistogram]) -> list[str]:
    lines = ["| metric | " + " | ".join(BIN_LABELS) + " | null | mean | min | max |",
             "|---|" + "---|" * (len(BIN_LABELS) + 4)]
    fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    for name, hist in hists.items():
        lines.append(f"| `{name}` | " + " | ".join(str(c) for c in hist.bins)
                     + f" | {hist.nulls} | {fmt(hist.mean)} | {fmt(hist.low)} | {fmt(hist.high)} |")
    return lines


def _counts(counter: dict) -> str:
    return ", ".join(f"`{k}` {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def render_section(config: str, split: str, data: dict) -> list[str]:
    """The card section of one split written by ``editforge metrics`` or ``editforge filter``."""
    lines = [f"### Quality metrics of `{config}` / `{split}`", ""]
    if data["kind"] == "metrics":
        lines.append(f"- Computed with `editforge metrics` from `{data['source']}`: CLIP `{data['clip_model']}`, "
                     f"DINOv2 `{data['dinov2_model']}` (embedding: {data['dinov2_token']}; ImageNet normalisation "
                     f"{'applied' if data['dinov2_normalize'] else 'skipped, as in UltraEdit'}); SSIM per RGB channel, "
                     "data range 1, 7x7 uniform window, averaged over channels.")
        lines.append(f"- Items: {data['num_items']}; scored: {data['num_scored']}; without both captions "
                     f"(null caption metrics): {data['num_without_captions']}; skipped: {data['num_skipped']}.")
        lines += ["", "Metric values (count per bin; a bin holds values from its label up to the next):", ""]
    else:
        thresholds = ", ".join(f"`{k}` >= {v:g}" for k, v in data["thresholds"].items()) or "none"
        preset = f" (preset `{data['preset']}`)" if data.get("preset") else ""
        lines.append(f"- Filtered with `editforge filter` from `{data['source']}`{preset}: kept {data['num_kept']} of "
                     f"{data['num_input']} rows.")
        lines.append(f"- Thresholds (a row is kept when every value is at least its threshold; a null value "
                     f"needed by a threshold drops the row): {thresholds}.")
        if data.get("top_k"):
            group = f"`{data['group_by']}`" if data.get("group_by") else "the whole split"
            lines.append(f"- Then the top {data['top_k']} by `{data['top_k_by']}` per {group}.")
        lines.append(f"- Failing each threshold (a row may fail several): {_counts(data['below'])}.")
        lines.append(f"- Dropped for a null value: {data['dropped_for_null']} (null per metric: {_counts(data['nulls'])}); "
                     f"dropped by the top-k: {data['dropped_by_top_k']}.")
        lines.append(f"- Kept per task: {_counts(data['kept_per_task'])} (of {_counts(data['input_per_task'])}).")
        lines += ["", "Input rows (count per bin; a bin holds values from its label up to the next):", ""]
        lines += histogram_table({k: MetricHistogram.from_dict(v) for k, v in data["input_histograms"].items()})
        lines += ["", "Kept rows:", ""]
    lines += histogram_table({k: MetricHistogram.from_dict(v) for k, v in data["histograms"].items()})
    return lines + [""]


def card_renderer(root: Path, current: tuple[str, str, dict]):
    """A ``render_card(records)`` for HubFolder.publish: the usual card plus every split's section."""
    from ..dataset_card import render_card

    def render(records) -> str:
        body = render_card(records, title=root.resolve().name)
        # the base card speaks of build-dataset; these splits were written by other commands
        body = body.replace("Written by `editforge build-dataset` in", "Written by editforge in", 1)
        for kind in ("metrics", "filter"):
            body = body.replace(f"Built from `--format {kind}`", f"Written by `editforge {kind}`")
        sections = []
        for record in records:
            if (record.config, record.split) == current[:2]:
                data = current[2]
            else:
                path = section_path(root, record.config, record.split)
                data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            if data is not None:
                sections += render_section(record.config, record.split, data)
        if sections:
            marker = "## Columns"
            head, tail = body.split(marker, 1) if marker in body else (body, None)
            body = head + "\n".join(["## Quality metrics", ""] + sections) + ("\n" + marker + tail if tail is not None else "")
        return body

    return render


def save_section(root: Path, config: str, split: str, data: dict) -> None:
    path = section_path(root, config, split)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)
