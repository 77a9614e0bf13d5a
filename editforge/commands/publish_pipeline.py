"""editforge publish-pipeline: write a Hub-ready repo folder for a reward-conditioned pipeline."""

from __future__ import annotations

from pathlib import Path

HELP = "Write a Hub-ready repo folder (code, model_index, weights, model card) for a reward-conditioned pipeline."


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", help="pipeline folder (save_pretrained or training output)")
    parser.add_argument("out", metavar="OUT", help="repo folder to write (must be empty or absent)")
    parser.add_argument("--repo-id", help="Hub id used in the model card's examples, e.g. org/reward-pix2pix")
    parser.add_argument("--base-model", help="Hub id of the base model, for the card (default: DIR's card)")
    parser.add_argument("--dataset", action="append", default=None, help="Hub id of a training dataset (repeatable)")
    parser.add_argument("--license", help="license id for the card (default: DIR's card, else apache-2.0)")
    parser.add_argument(
        "--lora-weights", metavar="FILE", help="a UNet LoRA .safetensors file to ship beside the pipeline"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")


def run(args) -> int:
    from editforge.errors import UsageError
    from editforge.hub import publish_pipeline

    source = Path(args.dir)
    if not source.is_dir():
        raise UsageError(f"{source} is not a folder")
    out = publish_pipeline(
        source, args.out, repo_id=args.repo_id, base_model=args.base_model, datasets=args.dataset,
        license=args.license, lora_weights=args.lora_weights, overwrite=args.overwrite,
    )
    print(f"wrote {out}: load with DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0
