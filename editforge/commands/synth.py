"""editforge synth: write synthetic edit triplets with ground-truth rewards."""

from __future__ import annotations

from .arguments import image_size, non_negative_int, unit_interval, writable_dir

HELP = "Generate synthetic edit triplets (images + manifest.jsonl) with controlled imperfections."
DEFAULT_SIZE = (64, 64)


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--n", type=non_negative_int, required=True, help="number of triplets")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument(
        "--imperfect", type=unit_interval, default=0.5, metavar="RATE",
        help="share of triplets with an instruction, detail or quality failure (0..1, default 0.5)",
    )
    parser.add_argument(
        "--size", type=image_size, default=DEFAULT_SIZE, metavar="WxH",
        help="image size, any aspect ratio (default 64x64)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args) -> int:
    out = writable_dir(args.out)
    from editforge.dataset_builders.synthetic import write_synthetic_dataset

    width, height = args.size
    manifest = write_synthetic_dataset(
        out, n=args.n, seed=args.seed, imperfect_rate=args.imperfect,
        width=width, height=height, progress=not args.no_progress,
    )
    print(f"wrote {args.n} triplets to {manifest}")
    return 0
