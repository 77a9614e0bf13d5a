"""editforge annotate: score edit triplets with an LVLM judge (Multi-Reward or VIEScore rubric)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from editforge.errors import UsageError
from editforge.vocabulary import MULTI_REWARD, RUBRIC_NAMES

from .arguments import non_negative_float, positive_float, positive_int

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
    parser.add_argument("--base-url", default=None, metavar="URL",
                        help="OpenAI-compatible endpoint (vLLM, Ollama, LM Studio...); default OPENAI_BASE_URL, else api.openai.com. The key comes from OPENAI_API_KEY only")
    parser.add_argument("--model", default=None, metavar="M", help="judge model (default gpt-4o)")
    parser.add_argument("--concurrency", type=positive_int, default=16, metavar="N", help="requests in flight at once (default 16)")
    parser.add_argument("--batch", action="store_true", help="use the OpenAI Batch API (half the price, results within 24 h)")
    parser.add_argument("--cache", default=None, metavar="PATH",
                        help="answer cache, SQLite (default ~/.cache/editforge/annotations.sqlite); makes runs resumable")
    parser.add_argument("--max-side", type=positive_int, default=768, metavar="PX",
                        help="downscale images so the longest side is at most PX before sending (default 768)")
    parser.add_argument("--timeout", type=positive_float, default=120.0, metavar="S", help="seconds per request (default 120)")
    parser.add_argument("--max-attempts", type=positive_int, default=6, metavar="K",
                        help="failed requests (429, 5xx, timeouts) per item before it is recorded as missing (default 6)")
    parser.add_argument("--max-invalid", type=positive_int, default=3, metavar="K",
                        help="invalid answers per item before it is recorded as missing (default 3)")
    parser.add_argument("--price-in", type=non_negative_float, default=2.50, metavar="USD",
                        help="price per million input tokens (default 2.50, gpt-4o; the Batch API costs half)")
    parser.add_argument("--price-out", type=non_negative_float, default=10.00, metavar="USD",
                        help="price per million output tokens (default 10.00, gpt-4o)")
    parser.add_argument("--poll-interval", type=positive_float, default=30.0, metavar="S", help="seconds between Batch API polls (default 30)")
    parser.add_argument("--allow-missing", action="store_true", help="exit 0 even when some items got no rewards")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


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
    from editforge.dataset_builders.annotation import Pricing, RetryPolicy, annotate_manifest

    report = annotate_manifest(
        args.manifest, out, config=args.config, split=args.split, rubric=args.rubric, judge=args.judge, base_url=args.base_url, model=args.model,
        concurrency=args.concurrency, cache=args.cache, max_side=args.max_side, batch=args.batch,
        allow_missing=True, progress=not args.no_progress, poll_interval=args.poll_interval,
        pricing=Pricing(args.price_in, args.price_out),
        policy=RetryPolicy(max_attempts=args.max_attempts, max_invalid_answers=args.max_invalid, timeout=args.timeout),
    )
    print(report.summary())
    if report.failed and not args.allow_missing:
        print(f"editforge annotate: {report.failed} of {report.total} items have no rewards "
              f"(recorded with their errors in {out}); run the same command again to retry them, "
              f"or pass --allow-missing", file=sys.stderr)
        return 1
    return 0
