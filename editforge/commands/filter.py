"""editforge filter: keep the triplets whose quality metrics pass thresholds (UltraEdit's presets), top-k per group."""

from __future__ import annotations

import argparse
import math

from editforge.vocabulary import METRIC_NAMES as METRICS

from .arguments import add_max_shard_size, positive_int

HELP = ("Keep the triplets of a scored dataset whose metrics pass thresholds (UltraEdit's presets or --min), "
        "optionally the top k per group; writes a dataset folder whose card records the thresholds.")
PRESET_NAMES = ("ultraedit-free-form", "ultraedit-region")  # = dataset_builders.metrics.filtering.PRESETS


def threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or name not in METRICS:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(METRICS)}, got {text!r}")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{name}: expected a finite number, got {value!r}")
    return name, number



def add_arguments(parser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="a dataset folder with metrics (written by editforge metrics)")
    parser.add_argument("out", metavar="OUT", help="the dataset folder to write the kept rows into")
    parser.add_argument("--config", default=None, help="config of DATASET (default: its default config)")
    parser.add_argument("--split", default="train", help="split to filter (default train)")
    parser.add_argument("--out-config", default=None, help="config name in OUT (default: the same as --config, or default)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default=None,
                        help="UltraEdit's published thresholds: free-form (clip_sim_image 0.75, clip_sim_dir 0.22, "
                             "dinov2_sim 0.4, both caption sims 0.2) or region (clip_sim_image 0.7, otherwise the same)")
    parser.add_argument("--min", type=threshold, action="append", default=[], metavar="NAME=VALUE",
                        help="keep rows with NAME >= VALUE (repeatable; overrides the preset's value for NAME); "
                             "a row whose NAME is null is dropped")
    parser.add_argument("--top-k-by", nargs=2, metavar=("METRIC", "K"), default=None,
                        help="then keep the K rows with the highest METRIC (per --group-by group), e.g. clip_sim_dir 3")
    parser.add_argument("--group-by", default=None, metavar="COLUMN",
                        help="the column whose equal values are candidates of one edit (e.g. instruction, "
                             "provenance.original_id); needs --top-k-by")
    add_max_shard_size(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args) -> int:
    from editforge.errors import UsageError

    top_k = rank_by = None
    if args.top_k_by is not None:
        rank_by, k = args.top_k_by
        if rank_by not in METRICS:
            raise UsageError(f"--top-k-by: unknown metric {rank_by!r}; expected one of {', '.join(METRICS)}")
        try:
            top_k = positive_int(k)
        except argparse.ArgumentTypeError as err:
            raise UsageError(f"--top-k-by: K {err}") from None
    from editforge.dataset_builders.metrics import filter_dataset

    report = filter_dataset(
        args.dataset, args.out, config=args.config, split=args.split, out_config=args.out_config, preset=args.preset,
        thresholds=dict(args.min), top_k=top_k, top_k_by=rank_by or "clip_sim_dir", group_by=args.group_by,
        max_shard_size=args.max_shard_size, progress=not args.no_progress,
    )
    print(report.summary())
    return 0
