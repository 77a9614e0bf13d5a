"""The body of the dataset card: how to load it, where the data came from, what is in it.

Rendered from the :class:`~.hub_folder.SplitRecord` of every published split, after the YAML
header that ``datasets`` reads. It is regenerated on every build into the folder.
"""

from __future__ import annotations

from editforge.vocabulary import PERSPECTIVES, VIESCORE_SCORES

from .build_stats import PAIR, Distribution
from .hub_folder import SplitRecord

# Skipped items listed by id in the card (all of them are in the split's .editforge-<split>.json).
LISTED_SKIPS = 20

EDIT_COLUMNS = """\
| column | type | |
|---|---|---|
| `id` | string | unique in the dataset |
| `source_image`, `edited_image` | Image | RGB, same size |
| `mask_image` | Image | 8-bit grey, white = region to edit; null when the source has none |
| `instruction` | string | |
| `source_caption`, `target_caption`, `task` | string | null when absent |
| `width`, `height` | int32 | of the images |
| `provenance` | {dataset, original_id} | where the row came from |
| `rewards` | {instruction_following, detail_preserving, generation_quality: {score: float32 0..5, feedback: string}} | null when absent |
| `metrics` | {clip_sim_source, clip_sim_target, clip_sim_dir, clip_sim_image, dinov2_sim, ssim: float32} | null when absent |
| `viescore` | {sc, pq, o: float32 0..10, sc_scores, pq_scores: list of float32, sc_reasoning, pq_reasoning} | null when absent |
"""

PAIR_COLUMNS = """\
| column | type | |
|---|---|---|
| `id`, `prompt` | string | |
| `image_0`, `image_1` | Image | RGB |
| `label_0` | float32 | 1 = image_0 preferred, 0 = image_1, 0.5 = tie |
| `theme`, `subtopic`, `contrast` | string | prompt taxonomy; null when absent |
| `provenance` | {dataset, original_id} | where the row came from |
"""


def _counts(counter: dict) -> str:
    return ", ".join(f"`{k}` {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def _distribution_table(title: str, distributions: dict[str, Distribution]) -> list[str]:
    first = next(iter(distributions.values()))
    values = range(first.low, first.high + 1)
    lines = [
        f"| {title} | " + " | ".join(str(v) for v in values) + " | mean |",
        "|---|" + "---|" * (len(values) + 1),
    ]
    for name, dist in distributions.items():
        mean = "" if dist.mean is None else f"{dist.mean:.2f}"
        lines.append(f"| {name} | " + " | ".join(str(c) for c in dist.bins) + f" | {mean} |")
    return lines


def _split_section(record: SplitRecord) -> list[str]:
    stats = record.stats
    lines = [f"### `{record.config}` / `{record.split}`", ""]
    lines.append(f"- Built from `--format {record.format}`: {stats.num_examples} examples in {record.num_shards} shard(s).")
    lines.append(f"- Sources: {_counts(stats.sources)}.")
    if stats.kind == PAIR:
        lines.append(f"- `label_0`: {_counts(stats.labels)}.")
        lines.append(f"- Themes: {_counts(stats.themes)}.")
    else:
        lines.append(f"- Tasks: {_counts(stats.tasks)}.")
        lines.append(
            f"- With a mask: {stats.with_mask}; with rewards: {stats.with_rewards}; "
            f"with VIEScore: {stats.with_viescore}; with metrics: {stats.with_metrics}."
        )
        if stats.with_rewards:
            lines += ["", "Reward scores (count per unit bin; a bin holds scores from its value up to the next):", ""]
            lines += _distribution_table("perspective", {p: stats.reward_scores[p] for p in PERSPECTIVES})
        if stats.with_viescore:
            lines += ["", "VIEScore (count per unit bin, 0..10):", ""]
            lines += _distribution_table("score", {k: stats.viescore_scores[k] for k in VIESCORE_SCORES})
    skipped = stats.skipped
    lines.append("")
    if not skipped:
        lines.append("- Skipped: none.")
    else:
        lines.append(f"- Skipped: {len(skipped)} ({_counts(stats.skipped_by_kind)}):")
        for item in skipped[:LISTED_SKIPS]:
            field = f" ({item['field']})" if item.get("field") else ""
            lines.append(f"  - `{item['id']}`{field}: {item['reason']}")
        if len(skipped) > LISTED_SKIPS:
            lines.append(f"  - ... and {len(skipped) - LISTED_SKIPS} more, listed in `.editforge-{record.split}.json`.")
    return lines + [""]


def render_card(records: list[SplitRecord], title: str = "editforge dataset") -> str:
    lines = [
        f"# {title}",
        "",
        "Written by `editforge build-dataset` in editforge's canonical features. Each config is "
        "Parquet shards with the images embedded; no loading script is needed.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
    ]
    for config in dict.fromkeys(r.config for r in records):
        lines.append(f'ds = load_dataset("path/to/this/folder/or/org/name", "{config}")')
    if records:
        lines.append(f'stream = load_dataset("path/to/this/folder/or/org/name", "{records[0].config}", streaming=True)')
    lines += ["```", "", "## Contents", "", "| config | split | format | examples | skipped | sources |", "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(
            f"| `{r.config}` | `{r.split}` | {r.format} | {r.num_examples} | {len(r.stats.skipped)} | {_counts(r.stats.sources)} |"
        )
    lines.append("")
    for r in records:
        lines += _split_section(r)
    kinds = {r.stats.kind for r in records}
    lines += ["## Columns", ""]
    if kinds - {PAIR}:
        lines += ["Edit triplets:", "", EDIT_COLUMNS]
    if PAIR in kinds:
        lines += ["Preference pairs:", "", PAIR_COLUMNS]
    return "\n".join(lines)
