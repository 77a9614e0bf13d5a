"""``filter_dataset``: keep the triplets whose quality metrics pass thresholds, then the top k per group.

    report = filter_dataset("scored/", "filtered/", preset="ultraedit-region",
                            top_k=3, top_k_by="clip_sim_dir", group_by="instruction")

UltraEdit's filter (its data_generation code): keep a candidate when ``clip_sim_image >= T_img``,
``clip_sim_dir >= T_dir``, ``dinov2_sim >= T_dino`` and both caption similarities ``>= 0.2``;
sort the survivors by ``clip_sim_dir`` and keep the top k among the candidates of one edit.
:data:`PRESETS` holds its published thresholds; ``thresholds`` add to or override them.

Values are compared as the float32 they are stored as (a stored 0.22 passes ``>= 0.22``). A row
whose value is null for a metric a threshold (or the top-k ranking) needs is dropped and counted,
never taken as passing. ``group_by`` names a column (``instruction``, ``task``, or a nested
``provenance.original_id``); rows whose group value is null are groups of their own; without
``group_by`` the top k of the whole split are kept. Kept rows stay in input order. The output
card records the thresholds, how many rows each one failed, the rows kept per task and
histograms of every metric before and after.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from editforge.errors import UsageError
from editforge.vocabulary import METRIC_NAMES

# UltraEdit's published thresholds (DESIGN.md, "Facts about UltraEdit's release").
PRESETS = {
    "ultraedit-free-form": {"clip_sim_image": 0.75, "clip_sim_dir": 0.22, "dinov2_sim": 0.4,
                            "clip_sim_source": 0.2, "clip_sim_target": 0.2},
    "ultraedit-region": {"clip_sim_image": 0.7, "clip_sim_dir": 0.22, "dinov2_sim": 0.4,
                         "clip_sim_source": 0.2, "clip_sim_target": 0.2},
}
NO_TASK = "(none)"


@dataclass
class FilterReport:
    out: Path
    config: str
    split: str
    num_input: int
    num_kept: int
    thresholds: dict
    below: dict = field(default_factory=dict)      # rows failing each threshold (non-null values)
    nulls: dict = field(default_factory=dict)      # rows null in each needed metric (non-exclusive)
    dropped_for_null: int = 0                      # rows dropped because a needed metric is null
    dropped_by_top_k: int = 0
    kept_per_task: dict = field(default_factory=dict)
    shards: list = field(default_factory=list)

    def summary(self) -> str:
        nulls = f"; {self.dropped_for_null} dropped for null metrics" if self.dropped_for_null else ""
        top = f"; {self.dropped_by_top_k} dropped by the top-k" if self.dropped_by_top_k else ""
        tasks = ", ".join(f"{k} {v}" for k, v in sorted(self.kept_per_task.items()))
        return (f"kept {self.num_kept} of {self.num_input} rows{nulls}{top} -> {self.out} "
                f"(config {self.config!r}, split {self.split!r}); per task: {tasks or 'none'}")


def resolve_thresholds(preset: str | None = None, thresholds: dict | None = None) -> dict:
    """The preset's thresholds updated with ``thresholds``; checks the metric names and values."""
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    merged = dict(PRESETS[preset]) if preset else {}
    for name, value in (thresholds or {}).items():
        if name not in METRIC_NAMES:
            raise UsageError(f"unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}")
        value = float(value)
        if not np.isfinite(value):
            raise UsageError(f"threshold {name}={value} is not a finite number")
        merged[name] = value
    return {name: merged[name] for name in METRIC_NAMES if name in merged}


def _column(table, name: str) -> list:
    """A (possibly nested, dotted) column of a flattened Arrow table as a Python list."""
    if name not in table.column_names:
        raise UsageError(f"no column {name!r} to group by (columns: {', '.join(table.column_names)})")
    return table.column(name).to_pylist()


def select_rows(metrics: dict[str, np.ndarray], thresholds: dict, top_k: int | None = None,
                top_k_by: str = "clip_sim_dir", groups: list | None = None) -> tuple[np.ndarray, dict]:
    """The indices kept (ascending) and the counts: ``below`` (rows failing each threshold),
    ``nulls`` (rows null in each needed metric; a row may count for several), ``dropped_for_null``
    (rows with any needed metric null), ``dropped_by_top_k``.

    ``metrics[name]`` is a float32 array with NaN for null.
    """
    n = len(next(iter(metrics.values())))
    keep = np.ones(n, dtype=bool)
    below, nulls = Counter(), Counter()
    any_null = np.zeros(n, dtype=bool)
    needed = list(thresholds) + ([top_k_by] if top_k is not None and top_k_by not in thresholds else [])
    for name in needed:
        null = np.isnan(metrics[name])
        nulls[name] = int(null.sum())
        any_null |= null
    for name, threshold in thresholds.items():
        values = metrics[name]
        fails = ~np.isnan(values) & (values < np.float32(threshold))
        below[name] = int(fails.sum())
        keep &= ~fails
    keep &= ~any_null
    dropped_by_top_k = 0
    if top_k is not None:
        values = metrics[top_k_by]
        survivors = np.flatnonzero(keep)
        order = survivors[np.lexsort((survivors, -values[survivors].astype(np.float64)))]
        taken: Counter = Counter()
        chosen = []
        for index in order:
            if groups is None:
                key = "all"
            elif groups[index] is None:  # a null group value: a group of its own
                key = ("row", int(index))
            else:
                key = ("group", groups[index])
            if taken[key] < top_k:
                taken[key] += 1
                chosen.append(index)
        dropped_by_top_k = len(survivors) - len(chosen)
        keep = np.zeros(n, dtype=bool)
        keep[np.asarray(chosen, dtype=np.int64)] = True
    counts = {"below": {k: v for k, v in below.items() if v}, "nulls": {k: v for k, v in nulls.items() if v},
              "dropped_for_null": int(any_null.sum()), "dropped_by_top_k": dropped_by_top_k}
    return np.flatnonzero(keep), counts


def filter_dataset(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: str | None = None,
    split: str = "train",
    out_config: str | None = None,
    preset: str | None = None,
    thresholds: dict | None = None,
    top_k: int | None = None,
    top_k_by: str = "clip_sim_dir",
    group_by: str | None = None,
    max_shard_size: int | str = "500MB",
    progress: bool = True,
    cache_dir: str | None = None,
) -> FilterReport:
    """Write the rows of ``dataset`` that pass into ``out`` (see the module docstring)."""
    from .card import add_metrics, histograms
    from .dataset_io import check_output, load_edit_dataset, publish_rows

    thresholds = resolve_thresholds(preset, thresholds)
    if top_k is not None and top_k < 1:
        raise UsageError(f"top_k must be 1 or more, got {top_k}")
    if top_k_by not in METRIC_NAMES:
        raise UsageError(f"unknown metric {top_k_by!r} to rank by; expected one of {', '.join(METRIC_NAMES)}")
    if group_by is not None and top_k is None:
        raise UsageError("group_by needs top_k (the number of rows kept per group)")
    if not thresholds and top_k is None:
        raise UsageError("nothing to filter by: give thresholds, a preset or top_k")
    out_config = out_config or config or "default"
    out = check_output(out, out_config, split)
    data = load_edit_dataset(dataset, config, split, cache_dir=cache_dir)
    n = len(data)

    if group_by is not None and group_by.split(".")[0] not in data.column_names:
        raise UsageError(f"no column {group_by!r} to group by (columns: {', '.join(data.column_names)})")
    columns = ["metrics", "task"] + ([group_by.split(".")[0]] if group_by else [])
    table = data.select_columns(list(dict.fromkeys(columns))).flatten().data.table
    metric_rows = data.select_columns(["metrics"])["metrics"]
    metrics = {name: np.array([np.nan if m is None or m[name] is None else m[name] for m in metric_rows],
                              dtype=np.float32) for name in METRIC_NAMES}
    groups = _column(table, group_by) if group_by else None
    if groups is not None:
        groups = [json.dumps(g, sort_keys=True) if isinstance(g, (dict, list)) else g for g in groups]
    kept, counts = select_rows(metrics, thresholds, top_k, top_k_by, groups)
    tasks = [t or NO_TASK for t in _column(table, "task")]
    input_per_task = Counter(tasks)
    kept_per_task = Counter(tasks[i] for i in kept)

    def section() -> dict:
        before, after = histograms(), histograms()
        kept_set = {int(i) for i in kept}
        for i, m in enumerate(metric_rows):
            add_metrics(before, m)
            if i in kept_set:
                add_metrics(after, m)
        return {
            "kind": "filter", "source": Path(str(dataset)).name, "preset": preset, "thresholds": thresholds,
            "top_k": top_k, "top_k_by": top_k_by if top_k else None, "group_by": group_by,
            "num_input": n, "num_kept": len(kept), **counts,
            "kept_per_task": dict(kept_per_task), "input_per_task": dict(input_per_task),
            "input_histograms": {k: h.to_dict() for k, h in before.items()},
            "histograms": {k: h.to_dict() for k, h in after.items()},
        }

    if len(kept) == 0:
        raise UsageError(f"no row of {n} passes the filter (failing: {counts['below']}; null: {counts['nulls']}); "
                         "nothing was written")
    kept_list = [int(i) for i in kept]

    def rows(skip: int):
        yield from data.select(kept_list[skip:])

    signature = {
        "dataset": str(Path(dataset).resolve()) if Path(dataset).exists() else str(dataset),
        "fingerprint": data._fingerprint, "config": config, "split": split, "thresholds": thresholds,
        "top_k": top_k, "top_k_by": top_k_by, "group_by": group_by,
    }
    shards, _ = publish_rows(out, config=out_config, split=split, kind="filter", rows=rows, total=len(kept_list),
                             signature=signature, section=section, max_shard_size=max_shard_size, progress=progress)
    return FilterReport(out=out, config=out_config, split=split, num_input=n, num_kept=len(kept_list),
                        thresholds=thresholds, below=counts["below"], nulls=counts["nulls"],
                        dropped_for_null=counts["dropped_for_null"],
                        dropped_by_top_k=counts["dropped_by_top_k"], kept_per_task=dict(kept_per_task), shards=shards)
