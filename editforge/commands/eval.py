"""editforge eval: evaluate editing models on a suite, judged by an LVLM (or the built-in oracle)."""

from __future__ import annotations

from editforge.vocabulary import RUBRIC_NAMES

from .arguments import add_judge_arguments, positive_int
from .metrics import add_metric_models

HELP = ("Evaluate editing pipelines side by side on a suite (synthetic, gedit-bench, emu-edit, magicbrush, "
        "a dataset folder), or text-to-image pipelines on prompts (synthetic-prompts, drawbench).")

SUITE_HELP = ("synthetic[:n=24,seed=1000,sizes=32x32+48x32+32x48] (the synthetic world, oracle judge); "
              "gedit-bench[:PATH or Hub id][,language=en|cn] (stepfun-ai/GEdit-Bench layout, viescore-edit); "
              "emu-edit[:PATH or Hub id][,split=test|validation] (facebook/emu_edit_test_set layout); "
              "magicbrush:PATH; or a manifest / canonical dataset folder. Text-to-image: "
              "synthetic-prompts[:n=24,seed=2000,sizes=32x32,styled=0] (alignment oracle); "
              "drawbench[:PATH or Hub id] (sayakpaul/drawbench layout, t2i-alignment)")


def add_arguments(parser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="pipeline folder or Hub id, optionally NAME=LOCATION (the same location may appear "
                             "under two names with different --model-args)")
    parser.add_argument("--suite", required=True, help=SUITE_HELP)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: results.json, items.jsonl, report.md, grid.png, images/ "
                             "(the same command again resumes there)")
    add_judge_arguments(parser, default_judge="the default for the synthetic suites",
                        cache_default="DIR/cache/answers.sqlite")
    parser.add_argument("--rubric", choices=RUBRIC_NAMES, default=None,
                        help="judge rubric (default: the suite's; multi-reward for synthetic, viescore-edit for gedit-bench)")
    parser.add_argument("--seeds", default="0", help="sampling seeds, comma-separated (default 0)")
    parser.add_argument("--model-args", action="append", default=[], metavar="[NAME:]KEY=VALUE,...",
                        help="call arguments of one model (NAME:) or of all, e.g. reward:rewards=5,5,5 or "
                             "steps=20,guidance_scale=3,image_guidance_scale=1.5; repeatable")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="edits per pipeline call (default 8)")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                        help="an item whose source image is unreadable: stop (fail, default) or leave it out and count it (skip)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the code a Hub model ships (local folders that ship code are trusted as given)")
    parser.add_argument("--metrics", action="store_true",
                        help="also UltraEdit's CLIP / DINOv2 / SSIM metrics of every edit (caption metrics where the "
                             "suite has captions), reported beside the judge's figures")
    add_metric_models(parser)
    parser.add_argument("--device", default=None, help="torch device of the pipelines (default: where they load)")
    parser.add_argument("--grid-rows", type=positive_int, default=8, metavar="N", help="items shown in grid.png (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args) -> int:
    from editforge.evaluation import evaluate
    from editforge.evaluation.report import render_report

    results = evaluate(
        args.models, args.suite, args.out, rubric=args.rubric, judge=args.judge, base_url=args.base_url,
        judge_model=args.model, seeds=args.seeds, model_args=args.model_args, batch_size=args.batch_size,
        concurrency=args.concurrency, on_error=args.on_error, cache=args.cache, progress=not args.no_progress,
        grid_rows=args.grid_rows, device=args.device, trust_remote_code=args.trust_remote_code or None,
        metrics=args.metrics, clip_model=args.clip_model, dinov2_model=args.dinov2_model,
    )
    if results is None:  # another process than the main one of accelerate launch: it made its share
        return 0
    report = render_report(results)
    print(report.split("\n### ", 1)[0].rstrip())
    print(f"\nwrote {results.out}/results.json, items.jsonl, report.md, grid.png")
    return 0
