"""A training run's output folder: the final pipeline published in place, the card's training
table, the run summary, and the upload to the Hub.

The output folder is a published pipeline (``editforge.hub.publish_pipeline``: model_index,
components, code files and LoRA file as the pipeline's publishing spec says, and a model card)
beside the run's own ``checkpoint-*/``, ``logs/`` and ``validation/``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

HUB_IGNORE = ["checkpoint-*", "checkpoint-*/**", "logs/**", "validation/**", ".final-*"]


def _hub_id(value: str) -> str | None:
    """A Hub id for the card's metadata; None for a local path."""
    return value if value and "/" in value and not Path(value).exists() else None


def card_metadata(config) -> dict:
    return {"base_model": _hub_id(config.pretrained_model_name_or_path), "datasets": _hub_id(config.dataset_name)}


def training_card_fields(config, result, dataset, denoiser: str = "UNet") -> dict:
    """The settings every run's card lists; a script adds its method's own."""
    fields = {
        "steps": result.global_step,
        "learning rate": config.learning_rate,
        "batch size": f"{config.train_batch_size} x {config.gradient_accumulation_steps} accumulation",
        "resolution": config.resolution,
        denoiser: "full fine-tune" if config.full else f"LoRA rank {config.rank}",
        "seed": config.seed,
        "training examples": len(dataset),
    }
    if getattr(dataset.info, "description", ""):  # e.g. rows left out for lack of rewards
        fields["left out"] = dataset.info.description
    return fields


def write_final_pipeline(config, trainer, build_pipeline: Callable[[object], object], spec: str, denoiser: str,
                         training: dict, extra_weights: Callable[[Path], list[Path]] | None = None) -> None:
    """Publish the trained pipeline into the output folder by its publishing ``spec`` (a name
    registered in ``editforge.publishing``). ``build_pipeline(None)`` builds it with
    the trained modules; with LoRA, the adapter of the trained ``denoiser`` (a component name) goes
    in its own file and the pipeline ships the base denoiser, ``build_pipeline(base)``. The folder
    is assembled aside and moved in entry by entry, so checkpoints and logs stay. ``extra_weights(folder)``
    writes other trained weight files (e.g. a widened patch embedding) there and returns their paths;
    they ship beside the pipeline, listed on the card, never inside the LoRA file."""
    from editforge.hub import publish_pipeline

    from .components import hub_kwargs
    from .lora import save_lora

    output_dir = trainer.output_dir
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=output_dir))
    try:
        lora_file, pipeline = None, None
        if config.full:
            pipeline = build_pipeline(None)
        else:
            trained = getattr(trainer.unwrap(), denoiser)
            (staging / "lora").mkdir()
            lora_file = save_lora(trained, staging / "lora")
            base = type(trained).from_pretrained(config.pretrained_model_name_or_path, subfolder=denoiser, **hub_kwargs(config))
            pipeline = build_pipeline(base)
        extra = extra_weights(staging) if extra_weights is not None else None
        final = staging / "pipeline"
        repo_id = config.hub_model_id or f"<your-name>/{Path(config.output_dir).resolve().name}"
        publish_pipeline(pipeline, final, spec, lora_weights=lora_file, extra_weights=extra, repo_id=repo_id, training=training,
                         **card_metadata(config))
        for entry in final.iterdir():
            target = output_dir / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(entry), str(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def finish_run(config, trainer, result, *, build_pipeline, spec: str, denoiser: str, training: dict,
               validate: Callable[[int], None] | None = None, keep_pipeline: bool = False,
               extra_weights: Callable[[Path], list[Path]] | None = None) -> dict:
    """After training: a last validation, the published pipeline, ``train_summary.json`` and the
    upload (main process only); returns the run summary (with ``"pipeline"``, the trained pipeline
    as it is in memory, when ``keep_pipeline``)."""
    summary = run_summary(trainer, result)
    if trainer.is_main_process:
        if validate is not None:
            validate(result.global_step)
        write_final_pipeline(config, trainer, build_pipeline, spec, denoiser, training, extra_weights)
        write_run_summary(trainer.output_dir, summary)
        if keep_pipeline:
            summary["pipeline"] = build_pipeline(None)
        if config.push_to_hub:
            push_output(config, trainer.output_dir)
    trainer.end()
    return summary


def run_summary(trainer, result) -> dict:
    return {
        "global_step": result.global_step,
        "losses": result.losses,
        "logs": result.logs,
        "samples_per_second": result.samples_per_second,
        "seconds": result.seconds,
        "resumed_from": result.resumed_from,
        "num_processes": trainer.accelerator.num_processes,
        "output_dir": str(trainer.output_dir),
    }


def write_run_summary(output_dir: Path, summary: dict) -> None:
    (Path(output_dir) / "train_summary.json").write_text(
        json.dumps({k: v for k, v in summary.items() if k not in ("losses", "logs", "pipeline")}, indent=2) + "\n")


def push_output(config, output_dir: Path) -> None:
    """Upload the output folder (not its checkpoints, logs or validation images)."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = config.hub_model_id or Path(output_dir).resolve().name
    create_repo(repo_id, exist_ok=True)
    upload_folder(repo_id=repo_id, folder_path=str(output_dir), ignore_patterns=HUB_IGNORE)
