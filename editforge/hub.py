"""Publishing glue: write a Hub-ready repo folder for a reward-conditioned InstructPix2Pix pipeline.

``publish_pipeline(pipeline_or_dir, out_dir)`` writes::

    out_dir/model_index.json                 _class_name ["pipeline", "RewardConditionedPix2PixPipeline"],
                                             reward_conditioner ["reward_module", "RewardConditioner"]
    out_dir/pipeline.py                      the self-contained pipeline code
    out_dir/reward_conditioner/              config.json, diffusion_pytorch_model.safetensors,
                                             reward_module.py (the conditioner's code)
    out_dir/<vae, unet, text_encoder, ...>/  the other components, as save_pretrained writes them
    out_dir/*.safetensors                    LoRA files, if any (never merged into other weights)
    out_dir/README.md                        the model card

The folder loads with ``DiffusionPipeline.from_pretrained(out_dir or repo, trust_remote_code=True)``
and, with editforge installed, with ``RewardConditionedPix2PixPipeline.from_pretrained(...)``.
Upload it with ``huggingface_hub.upload_folder(repo_id=..., folder_path=out_dir)``.

This is needed because diffusers' ``save_pretrained`` copies no code and, for a pipeline that was
itself loaded from custom code, writes module names that do not load again.

Only the standard library is imported at module level (the CLI imports this module).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

from editforge.errors import UsageError

CODE_PACKAGE = "editforge.pipelines"
PIPELINE_SOURCE = "pipeline_reward_pix2pix.py"
CONDITIONER_SOURCE = "reward_conditioner.py"
PIPELINE_CLASS = "RewardConditionedPix2PixPipeline"
CONDITIONER_CLASS = "RewardConditioner"
PIPELINE_FILE = "pipeline"  # -> pipeline.py at the repo root
CONDITIONER_FOLDER = "reward_conditioner"
CONDITIONER_FILE = "reward_module"  # -> reward_conditioner/reward_module.py
CONDITIONER_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _source_file(name: str) -> Path:
    """A file of the installed ``editforge.pipelines`` package, found without importing it."""
    spec = importlib.util.find_spec(CODE_PACKAGE)
    return Path(spec.submodule_search_locations[0]) / name


def _prepare_out_dir(out_dir: Path, source: Path | None, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder")
    if source is not None and (out_dir.resolve() == source.resolve() or source.resolve() in out_dir.resolve().parents):
        raise UsageError(f"{out_dir} is the pipeline folder or inside it; publish to another folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"{out_dir} is not empty; choose an empty folder or pass overwrite (--overwrite)")


def _stage_from_folder(source: Path, staging: Path) -> None:
    index_path = source / "model_index.json"
    if not index_path.is_file():
        raise UsageError(f"{source} has no model_index.json: not a diffusers pipeline folder")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if CONDITIONER_FOLDER not in index or not (source / CONDITIONER_FOLDER / CONDITIONER_WEIGHTS).is_file():
        raise UsageError(
            f"{source} has no {CONDITIONER_FOLDER} component ({CONDITIONER_FOLDER}/{CONDITIONER_WEIGHTS});"
            " add one with RewardConditioner.from_unet(unet) before publishing"
        )

    def skip(folder: str, names: list[str]) -> list[str]:
        # the pipeline's and the conditioner's code come from the installed package; the card and
        # the index are written anew (code of any other component stays, and is refused later)
        folder = Path(folder)
        if folder == source:
            regenerated = ("README.md", "model_index.json")
            return [n for n in names if n.endswith(".py") or n.startswith(".") or n in regenerated]
        replaced = folder == source / CONDITIONER_FOLDER
        return [n for n in names if n == "__pycache__" or (replaced and n.endswith(".py"))]

    shutil.copytree(source, staging, ignore=skip, dirs_exist_ok=True)
    shutil.copy2(index_path, staging / "model_index.json")


def _stage_from_pipeline(pipeline, staging: Path) -> None:
    if getattr(pipeline, CONDITIONER_FOLDER, None) is None:
        raise UsageError(
            f"{type(pipeline).__name__} has no reward_conditioner component; nothing reward-conditioned to publish"
        )
    for name in ("unet", "text_encoder"):
        if getattr(getattr(pipeline, name, None), "peft_config", None):
            raise UsageError(
                f"the pipeline's {name} carries LoRA adapters; publish the base pipeline and pass the LoRA file"
                " (lora_weights=...), or merge it first with pipe.fuse_lora(); pipe.unload_lora_weights()"
            )
    pipeline.save_pretrained(staging)


def _check_lora_file(path: Path) -> None:
    from safetensors import safe_open

    if not path.is_file():
        raise UsageError(f"LoRA weights {path} not found")
    with safe_open(str(path), framework="numpy") as weights:
        keys = list(weights.keys())
    stray = [key for key in keys if "lora" not in key]
    if not keys or stray:
        raise UsageError(f"{path} is not a LoRA file: key {stray[0] if stray else '(none)'!r} has no 'lora' in it")


def _conditioner_summary(staging: Path) -> dict:
    from safetensors import safe_open

    config = json.loads((staging / CONDITIONER_FOLDER / "config.json").read_text(encoding="utf-8"))
    total = 0
    with safe_open(str(staging / CONDITIONER_FOLDER / CONDITIONER_WEIGHTS), framework="numpy") as weights:
        for key in weights.keys():
            count = 1
            for size in weights.get_slice(key).get_shape():
                count *= size
            total += count
    return {
        "conditioner_parameters": f"{total:,}",
        "time_embed_dim": config["time_embed_dim"],
        "latent_channels": config["latent_channels"],
        "feedback_dim": config["feedback_dim"],
        "perspectives": config.get("perspectives", []),
    }


def _card_metadata(readme: Path) -> dict:
    """base_model, datasets and license from an existing model card's YAML header."""
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    data = ModelCard.load(readme).data
    return {"base_model": data.base_model, "datasets": data.datasets, "license": data.license}


def _rewrite_model_index(staging: Path) -> None:
    index_path = staging / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    for name, entry in index.items():
        if name.startswith("_") or name == CONDITIONER_FOLDER or not isinstance(entry, list):
            continue
        library = entry[0]
        # a dotted module path (editforge.pipelines..., diffusers_modules...) or a code file is custom code
        if library is not None and ("." in library or (staging / name / f"{library}.py").exists()):
            raise UsageError(
                f"component {name!r} comes from {library!r}, which a Hub user cannot load; only the"
                f" {CONDITIONER_FOLDER} component may be custom code"
            )
    index["_class_name"] = [PIPELINE_FILE, PIPELINE_CLASS]
    index[CONDITIONER_FOLDER] = [CONDITIONER_FILE, CONDITIONER_CLASS]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def publish_pipeline(
    pipeline_or_dir,
    out_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    datasets: str | Iterable[str] | None = None,
    license: str | None = None,
    training: Mapping[str, object] | None = None,
    results: str | None = None,
    lora_weights: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Hub-ready repo folder for a reward-conditioned pipeline; return ``out_dir``.

    Args:
        pipeline_or_dir: a ``RewardConditionedPix2PixPipeline`` (however it was loaded) or a folder
            holding one (``save_pretrained`` output, a training run's output, a published folder).
            Weights of a folder are copied byte for byte; its code files are replaced by the
            installed code.
        out_dir: the repo folder to write; it must be empty or absent unless ``overwrite``.
        repo_id: the Hub id the card's examples use (default: ``<your-name>/<out_dir name>``).
        base_model, datasets, license: card metadata; for a folder with a README.md, its values
            are kept where these are not given (license defaults to apache-2.0).
        training: settings shown as a table in the card (steps, learning rate, reward dropout, ...).
        results: markdown shown in the card's Results section.
        lora_weights: a UNet LoRA safetensors file to ship beside the pipeline (keys must contain
            "lora", as ``load_lora_weights`` requires).
        overwrite: replace the contents of a non-empty ``out_dir``.

    The folder is assembled in a temporary folder beside ``out_dir`` and moved into place only
    when complete, so a failure leaves ``out_dir`` as it was.
    """
    out_dir = Path(out_dir)
    source = Path(pipeline_or_dir) if isinstance(pipeline_or_dir, (str, os.PathLike)) else None
    if source is not None and not source.is_dir():
        raise UsageError(f"{source} is not a folder")
    _prepare_out_dir(out_dir, source, overwrite)
    lora_path = Path(lora_weights) if lora_weights is not None else None
    if lora_path is not None:
        _check_lora_file(lora_path)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        if source is not None:
            _stage_from_folder(source, staging)
        else:
            _stage_from_pipeline(pipeline_or_dir, staging)
        if lora_path is not None:
            shutil.copy2(lora_path, staging / lora_path.name)
        shutil.copy2(_source_file(PIPELINE_SOURCE), staging / f"{PIPELINE_FILE}.py")
        shutil.copy2(_source_file(CONDITIONER_SOURCE), staging / CONDITIONER_FOLDER / f"{CONDITIONER_FILE}.py")
        _rewrite_model_index(staging)
        known = _card_metadata(source / "README.md") if source is not None else {}
        write_model_card(
            staging,
            repo_id=repo_id or f"<your-name>/{out_dir.resolve().name}",
            base_model=base_model or known.get("base_model"),
            datasets=datasets or known.get("datasets"),
            license=license or known.get("license") or "apache-2.0",
            training=training,
            results=results,
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def write_model_card(folder: str | os.PathLike, *, repo_id: str, **card_fields) -> Path:
    """Write ``folder/README.md`` for the reward-conditioned pipeline in ``folder``."""
    from editforge.model_cards import render_model_card

    folder = Path(folder)
    lora_names = sorted(path.name for path in folder.glob("*.safetensors"))
    card = render_model_card(
        "reward_pix2pix",
        repo_id=repo_id,
        lora_weight_names=lora_names,
        tags=["image-editing", "instruct-pix2pix", "multi-reward"],
        **_conditioner_summary(folder),
        **card_fields,
    )
    card.save(folder / "README.md")
    return folder / "README.md"
