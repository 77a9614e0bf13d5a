"""The dataset card of a preference-pair dataset written by ``editforge generate-pairs``: how to
load and train on it, how the images were made and judged, what the rules kept and left out."""

from __future__ import annotations

import json

from ..dataset_card import PAIR_COLUMNS

COLUMNS = PAIR_COLUMNS + (
    "| `pair_id` | string | the contrasting prompt pair (from the prompt dataset); its two rows have the same two "
    "images, each preferring the image made for its own prompt |\n"
)


def render_pair_card(data: dict, title: str) -> str:
    """The card body from a run's report (:meth:`.pairs.PairReport.to_dict`)."""
    images, judge, dropped = data["images"], data["judge"], data["dropped"]
    size = "x".join(map(str, images["size"])) if images.get("size") else "the pipeline's default size"
    call_args = json.dumps(images.get("call_args") or {})
    lines = [
        f"# {title}",
        "",
        "Text-to-image preference pairs in the manner of InstructEngine (arXiv 2504.10329): for each contrasting "
        "prompt pair, an image made for each prompt, both judged against both prompts; a pair is kept only when each "
        "image matches its own prompt better than the other one. Each kept pair is two rows with the same two images "
        "(`image_0` made for the base prompt, `image_1` for the contrast prompt): the base prompt prefers `image_0` "
        "(`label_0` = 1), the contrast prompt `image_1` (`label_0` = 0). Written by `editforge generate-pairs`.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'ds = load_dataset("path/to/this/folder/or/org/name", split="train")',
        "```",
        "",
        "Cross-validation Diffusion-DPO uses both rows of a pair (`training/train_diffusion_dpo.py --dataset_name "
        "... --alignment cross_validation`), single-pair DPO the first (`--alignment single_pair`).",
        "",
        "## Source",
        "",
        f"- Prompts: `{data['prompts']}`, {data['pairs']} pairs.",
        f"- Images: `{images['model']}` with call arguments `{call_args}`, {size}; "
        + ("made elsewhere and copied in (no seeds)." if images["seed"] is None else
           f"each image's generator is seeded from the run's seed {images['seed']} and the image id "
           f"(`<pair_id>-base`, `<pair_id>-contrast`), so batching does not change it; every image's seed is in "
           f"`generation.json`."),
        f"- Judge: `{judge['model']}` through {judge['endpoint']}, rubric `{judge['rubric']}` (alignment 0..5), each "
        f"image against both prompts of its pair.",
        "",
        "## Contents",
        "",
        f"- Images: {data['made'] + data['reused']} ({data['made']} made by the last run); answers: {data['answers']} "
        f"of {4 * data['pairs']}, {data['missing_answers']} missing.",
        f"- Kept: {data['kept']} pairs, {data['rows']} rows.",
        f"- Dropped by the rules: {sum(dropped.values())} (the base image does not match the base prompt better than "
        f"the contrast prompt: {dropped['base']}; the contrast image does not match the contrast prompt better: "
        f"{dropped['contrast']}; both: {dropped['both']}).",
        f"- Missing an answer (left out, never assumed; a rerun asks again): {data['missing']}"
        + (" (" + ", ".join(f"`{e}` {n}" for e, n in sorted(data["errors"].items())) + ")." if data["errors"] else "."),
        "",
        "## Columns",
        "",
        COLUMNS,
    ]
    return "\n".join(lines)
