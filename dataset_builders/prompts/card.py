"""The dataset card of a prompt-pair dataset written by ``editforge generate-prompts``: how to
load it, where the prompts came from, what was left out and why."""

from __future__ import annotations

from .near_duplicates import DEFAULT_THRESHOLD

LISTED = 10  # missing items and removed near-duplicates listed in the card (all are in generation.json)

COLUMNS = """\
| column | type | |
|---|---|---|
| `pair_id` | string | the (base prompt, axis) pair: 16 hex digits of a SHA-256 of theme, subtopic, base prompt and axis |
| `theme`, `subtopic` | string | the taxonomy entry the base prompt was written for |
| `contrast` | string | the contrast axis of the variant |
| `base_prompt`, `contrast_prompt` | string | the base prompt and its contrasting variant |
| `model` | string | the LLM that wrote them |
"""


def _counts(counter: dict) -> str:
    return ", ".join(f"`{k}` {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def render_prompt_card(data: dict, missing: list[dict], removed: list[dict], title: str) -> str:
    """The card body from a run's report (:meth:`.generation.GenerationReport.to_dict`), its
    missing items and its removed near-duplicates."""
    usage = data["answer_usage"]
    lines = [
        f"# {title}",
        "",
        "Text-to-image prompt pairs in the manner of InstructEngine (arXiv 2504.10329): base prompts written per "
        "subtopic of a taxonomy, and for each base prompt one contrasting variant per contrast axis. Written by "
        "`editforge generate-prompts`, as the input of `editforge generate-pairs` (an image for each prompt of a pair).",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'ds = load_dataset("path/to/this/folder/or/org/name", split="train")',
        "```",
        "",
        "## Source",
        "",
        f"- Taxonomy `{data['taxonomy']}`: {data['subtopics']} subtopics, {data['per_subtopic']} base prompts asked "
        f"per subtopic, contrast axes {', '.join(f'`{a}`' for a in data['axes'])}.",
        f"- Written by `{data['model']}` through {data['endpoint']}, one structured-output request per subtopic, "
        f"seed {data['seed']}.",
        f"- Tokens of the answers used: {usage['prompt_tokens']} in + {usage['completion_tokens']} out.",
        "",
        "## Contents",
        "",
        f"- Pairs: {data['pairs']} ({_counts(data['pairs_per_axis'])}) from {data['base_prompts']} base prompts.",
        f"- Subtopics without a valid answer (after retries; recorded as missing, nothing made up): "
        f"{data['missing_subtopics']}" + (f" ({_counts(data['errors'])})." if data["errors"] else "."),
        f"- Variants with the same words as their base prompt (no contrast; missing): {data['not_contrasting']}.",
        f"- Near-duplicate base prompts removed with their variants: {data['near_duplicates']}. A base prompt is a "
        f"near-duplicate when the Jaccard similarity of its set of word trigrams (lower-cased words, with start and "
        f"end marks) to that of a base prompt kept before it, in taxonomy order, is at least {data['threshold']:g}"
        + (" (the default)." if data["threshold"] == DEFAULT_THRESHOLD else "."),
    ]
    if missing:
        lines += ["", "Missing (all of them are in `generation.json`):", ""]
        for item in missing[:LISTED]:
            what = f"`{item['contrast']}` variant of {item['base_prompt']!r}" if item["contrast"] else "the whole answer"
            lines.append(f"- {item['theme']} / {item['subtopic']}: {what}: {item['error']}")
    if removed:
        lines += ["", "Near-duplicates removed (all of them are in `generation.json`):", ""]
        for item in removed[:LISTED]:
            lines.append(f"- {item['base_prompt']!r} ({item['theme']} / {item['subtopic']}), near {item['near_duplicate_of']!r}")
    lines += ["", "## Columns", "", COLUMNS]
    return "\n".join(lines)
