"""editforge annotate: score edit triplets with an LVLM judge (Multi-Reward or VIEScore rubric)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from editforge.errors import UsageError
from editforge.vocabulary import MULTI_REWARD, RUBRIC_NAMES

from .arguments import add_llm_arguments, llm_options, positive_int

HELP = "Score edit triplets with a vision-language judge (multi-reward or viescore-edit) through any OpenAI-compatible API."


def add_arguments(parser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST",
                        help="triplet manifest (manifest.jsonl, or a folder holding one), or a dataset folder "
                             "written by build-dataset")
    parser.add_argument("--config", default=None, help="dataset config to annotate (dataset folders only)")
    parser.add_argument("--split", default="train", help="dataset split to annotate (dataset folders only; default train)")
    parser.add_argument("--out", required=True, metavar="OUT.jsonl", help="output JSONL: the input lines plus rewards, judge, usage")
    parser.add_argument("--rubric", choices=RUBRIC_NAMES, default=MULTI_REWARD,
                        help="multi-reward: three 0..5 scores with feedback; viescore-edit: SC, PQ, O on 0..10 (default multi-reward)")
    parser.add_argument("--judge", choices=("oracle",), default=None,
                        help="oracle: the synthetic world's built-in judge behind a loopback OpenAI-compatible server (no key, no network)")
    add_llm_arguments(parser, unit="item",
                      base_url_help="OpenAI-compatible endpoint (vLLM, Ollama, LM Studio...); default OPENAI_BASE_URL, "
                                    "else api.openai.com. The key comes from OPENAI_API_KEY only",
                      model_help="judge model (default gpt-4o)")
    parser.add_argument("--max-side", type=positive_int, default=768, metavar="PX",
                        help="downscale images so the longest side is at most PX before sending (default 768)")


def _check_output(path: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'rewards.jsonl'}")
    folder = out.parent if str(out.parent) else Path(".")
    if folder.exists() and not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write to {folder}")
    return out


def run(args) -> int:
    out = _check_output(args.out)
    from editforge.dataset_builders.annotation import annotate_manifest

    report = annotate_manifest(
        args.manifest, out, config=args.config, split=args.split, rubric=args.rubric, judge=args.judge, base_url=args.base_url, model=args.model,
        concurrency=args.concurrency, cache=args.cache, max_side=args.max_side, batch=args.batch,
        allow_missing=True, progress=not args.no_progress, poll_interval=args.poll_interval, **llm_options(args),
    )
    print(report.summary())
    if report.failed and not args.allow_missing:
        print(f"editforge annotate: {report.failed} of {report.total} items have no rewards "
              f"(recorded with their errors in {out}); run the same command again to retry them, "
              f"or pass --allow-missing", file=sys.stderr)
        return 1
    return 0
