"""editforge metrics: UltraEdit's CLIP / DINOv2 / SSIM quality metrics for every triplet of a dataset."""

from __future__ import annotations

import sys

from .arguments import add_max_shard_size, non_negative_int, positive_int

HELP = ("Score every triplet of a canonical edit dataset with UltraEdit's quality metrics (CLIP, DINOv2, SSIM) "
        "into the metrics column of a new dataset folder; batched, resumable, runs under accelerate launch.")
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"  # = dataset_builders.metrics.clip.DEFAULT_CLIP_MODEL
DEFAULT_DINOV2_MODEL = "facebook/dinov2-with-registers-large"  # = ...metrics.dinov2.DEFAULT_DINOV2_MODEL


def add_arguments(parser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="a dataset folder written by build-dataset (or a Hub dataset id)")
    parser.add_argument("out", metavar="OUT", help="the dataset folder to write the scored split into")
    parser.add_argument("--config", default=None, help="config of DATASET to score (default: its default config)")
    parser.add_argument("--split", default="train", help="split to score (default train)")
    parser.add_argument("--out-config", default=None, help="config name in OUT (default: the same as --config, or default)")
    add_metric_models(parser)
    parser.add_argument("--dinov2-no-normalize", action="store_true",
                        help="skip the DINOv2 processor's ImageNet normalisation, as UltraEdit's script did")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="triplets per model batch (default 32)")
    parser.add_argument("--num-workers", type=non_negative_int, default=2, metavar="N",
                        help="DataLoader workers decoding and preprocessing images (default 2; 0: in the main process)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="model weights' dtype (default float32)")
    parser.add_argument("--device", default=None, help="torch device (default: accelerate's device for this process)")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                        help="an unreadable image or a source and edit of different sizes stops the run (fail, default; "
                             "results so far are kept) or is left out and counted in the card (skip)")
    add_max_shard_size(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_metric_models(parser) -> None:
    """--clip-model and --dinov2-model (also editforge eval's, for --metrics)."""
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, metavar="ID",
                        help=f"CLIPModel checkpoint, id or folder (default {DEFAULT_CLIP_MODEL})")
    parser.add_argument("--dinov2-model", default=DEFAULT_DINOV2_MODEL, metavar="ID",
                        help=f"DINOv2 checkpoint, id or folder (default {DEFAULT_DINOV2_MODEL})")


def run(args) -> int:
    from editforge.dataset_builders.metrics import compute_metrics

    try:
        report = compute_metrics(
            args.dataset, args.out, config=args.config, split=args.split, out_config=args.out_config,
            clip_model=args.clip_model, dinov2_model=args.dinov2_model, dinov2_normalize=not args.dinov2_no_normalize,
            batch_size=args.batch_size, num_workers=args.num_workers, dtype=args.dtype, device=args.device,
            on_error=args.on_error, max_shard_size=args.max_shard_size, progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print("editforge metrics: interrupted; the scored batches are kept, run the same command to continue",
              file=sys.stderr)
        return 130
    if report.process_index == 0:
        print(report.summary())
        for item in report.skipped[:10]:
            field = f" ({item['field']})" if item.get("field") else ""
            print(f"  skipped {item['id']}{field}: {item['reason']}")
        if len(report.skipped) > 10:
            print(f"  ... {len(report.skipped) - 10} more skipped, listed in the dataset card")
    return 0
