"""editforge build-dataset: turn an editing dataset on disk into a Hub-ready Parquet folder."""

from __future__ import annotations

import sys

from editforge.dataset_builders.formats import FORMATS

from .arguments import add_max_shard_size

HELP = "Convert an editing or preference dataset on disk into a Hub-ready folder (Parquet shards + dataset card)."


def add_arguments(parser) -> None:
    parser.add_argument(
        "--format", required=True, choices=list(FORMATS), metavar="FORMAT",
        help="source layout: " + "; ".join(f"{name} ({what})" for name, (_, _, what) in FORMATS.items()),
    )
    parser.add_argument("src", metavar="SRC", help="the source folder or file")
    parser.add_argument("out", metavar="OUT", help="the dataset folder to write (several configs can share it)")
    parser.add_argument("--config", default="default", help="config name (default: default)")
    parser.add_argument("--split", default="train", help="split name (default: train)")
    add_max_shard_size(parser)
    parser.add_argument(
        "--on-error", choices=("fail", "skip"), default="fail",
        help="a bad item (corrupt or missing image, wrong reward shape...) stops the build (fail, default) "
             "or is left out and counted in the card (skip)",
    )
    parser.add_argument("--push-to-hub", metavar="REPO", help="then upload the folder as this Hub dataset repo")
    options = parser.add_argument_group("options of some formats")
    options.add_argument(
        "--rewards-from", choices=("rewards", "ground_truth"),
        help="manifest: take rewards from the judge's 'rewards' (default) or a synthetic manifest's 'ground_truth'",
    )
    options.add_argument("--images-dir", metavar="DIR", help="rewardedit20k: the InstructPix2Pix sample folders (default: beside the JSON)")
    options.add_argument(
        "--source-files", metavar="GLOB",
        help="Parquet formats: shards to read, relative to SRC (e.g. 'data/dev-*.parquet'; default: all)",
    )
    options.add_argument("--provenance", metavar="NAME", help="dataset name recorded in provenance.dataset")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args) -> int:
    from editforge.dataset_builders.build import build_dataset, push_folder_to_hub

    try:
        report = build_dataset(
            args.format, args.src, args.out, config=args.config, split=args.split,
            max_shard_size=args.max_shard_size, on_error=args.on_error, progress=not args.no_progress,
            rewards_from=args.rewards_from, images_dir=args.images_dir, source_files=args.source_files,
            provenance=args.provenance,
        )
    except KeyboardInterrupt:
        print(f"editforge build-dataset: interrupted; nothing was published to {args.out} "
              "(what was there before is unchanged); run the same command to resume after the last complete shard",
              file=sys.stderr)
        return 130
    print(report.summary())
    for item in report.skipped[:10]:
        field = f" ({item['field']})" if item.get("field") else ""
        print(f"  skipped {item['id']}{field}: {item['reason']}")
    if report.num_skipped > 10:
        print(f"  ... {report.num_skipped - 10} more skipped, listed in the dataset card")
    if args.push_to_hub:
        url = push_folder_to_hub(report.out, args.push_to_hub)
        print(f"pushed to {args.push_to_hub}: {url}")
    return 0
