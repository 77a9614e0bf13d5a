"""editforge publish-pipeline: write a Hub-ready repo folder for a pipeline folder, by its publishing spec."""

from __future__ import annotations

from pathlib import Path

HELP = "Write a Hub-ready repo folder (code, model_index, weights, model card) for a pipeline folder."


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", help="pipeline folder (save_pretrained or training output)")
    parser.add_argument("out", metavar="OUT", help="repo folder to write (must be empty or absent)")
    parser.add_argument(
        "--spec", metavar="NAME",
        help="publishing spec (editforge/publishing.py): reward_pix2pix, instruct_pix2pix, ... (default: from DIR's"
             " model_index; a plain InstructPix2Pix folder needs --spec instruct_pix2pix)",
    )
    parser.add_argument("--repo-id", help="Hub id used in the model card's examples, e.g. org/reward-pix2pix")
    parser.add_argument("--base-model", help="Hub id of the base model, for the card (default: DIR's card)")
    parser.add_argument("--dataset", action="append", default=None, help="Hub id of a training dataset (repeatable)")
    parser.add_argument("--license", help="license id for the card (default: DIR's card, else apache-2.0)")
    parser.add_argument(
        "--lora-weights", metavar="FILE", action="append", default=None,
        help="a LoRA .safetensors file to ship beside the pipeline (LoRA keys only; repeatable)",
    )
    parser.add_argument(
        "--extra-weights", metavar="FILE", action="append", default=None,
        help="another .safetensors file to ship as it is and list on the card, e.g. a widened patch embedding (repeatable)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")
    parser.add_argument(
        "--space", action="store_true",
        help="also write a Space-ready Gradio app (app.py, editforge_app.py, requirements.txt; editforge app's page)"
             " so that OUT runs as a Hugging Face Space or with `python app.py` (editing pipelines)",
    )


def run(args) -> int:
    from editforge.errors import UsageError
    from editforge.hub import publish_pipeline

    source = Path(args.dir)
    if not source.is_dir():
        raise UsageError(f"{source} is not a folder")
    out = publish_pipeline(
        source, args.out, args.spec, repo_id=args.repo_id, base_model=args.base_model, datasets=args.dataset,
        license=args.license, lora_weights=args.lora_weights, extra_weights=args.extra_weights,
        overwrite=args.overwrite, space=args.space,
    )
    ships_code = any(out.rglob("*.py"))
    trust = ", trust_remote_code=True" if ships_code else ""
    print(f"wrote {out}: load with DiffusionPipeline.from_pretrained({str(out)!r}{trust})")
    if args.space:
        print(f"and a Gradio Space: python {out / 'app.py'}, or upload_folder(..., repo_type=\"space\")")
    return 0
