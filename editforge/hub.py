"""Publishing: write any editforge pipeline as a Hub-ready repo folder, from its publishing spec.

``publish_pipeline(pipeline_or_dir, out_dir, spec=None)`` writes, for the spec of the pipeline
(``editforge.publishing``: ``reward_pix2pix``, ``instruct_pix2pix``, ...)::

    out_dir/model_index.json            for a spec that ships code: _class_name ["pipeline", <class>],
                                        each code component [<module>, <class>]; for a stock
                                        diffusers class: unchanged (no trust flag needed)
    out_dir/pipeline.py                 the pipeline's self-contained code (specs that ship code)
    out_dir/<component>/<module>.py     the code of each code-carrying component (reward_conditioner/
                                        reward_module.py), beside its config and weights
    out_dir/<vae, unet, ...>/           the other components, as save_pretrained writes them
    out_dir/*.safetensors               LoRA files (LoRA keys only) and other weight files, as given
    out_dir/README.md                   the model card (the spec's template), listing every weight file
    out_dir/app.py, editforge_app.py,   with ``space=True`` (editing pipelines): a Gradio Space serving the
      requirements.txt                  folder's pipeline in editforge's editing page (``editforge.app``);
                                        the card then also names the Space's sdk (``sdk: gradio``)

For ``reward_pix2pix`` the folder loads with ``DiffusionPipeline.from_pretrained(out_dir or repo,
trust_remote_code=True)`` and, with editforge installed, ``RewardConditionedPix2PixPipeline.from_pretrained``;
for ``instruct_pix2pix`` with ``DiffusionPipeline.from_pretrained(out_dir)``. Upload it with
``huggingface_hub.upload_folder(repo_id=..., folder_path=out_dir)``.

Code is copied from the installed package and model_index rewritten because diffusers'
``save_pretrained`` copies no code and, for a pipeline that was itself loaded from custom code,
writes module names that do not load again.

Only the standard library is imported at module level (the CLI imports this module).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

from editforge.errors import UsageError
from editforge.publishing import (
    PIPELINE_MODULE,
    PublishSpec,
    detect_spec,
    get_spec,
    stock_alternatives,
    validate_spec,
)

PathLike = str | os.PathLike
# template variables publish_pipeline sets itself
_CARD_RESERVED = ("repo_id", "spec", "lora_weight_names", "extra_weight_names", "tags", "pipeline_tag", "library_name",
                  "base_model", "datasets", "license", "training", "results")


def publish_pipeline(
    pipeline_or_dir,
    out_dir: PathLike,
    spec: str | PublishSpec | None = None,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    datasets: str | Iterable[str] | None = None,
    license: str | None = None,
    training: Mapping[str, object] | None = None,
    results: str | None = None,
    lora_weights: PathLike | Iterable[PathLike] | None = None,
    extra_weights: PathLike | Iterable[PathLike] | None = None,
    card_fields: Mapping[str, object] | None = None,
    overwrite: bool = False,
    space: bool = False,
) -> Path:
    """Write a Hub-ready repo folder for a pipeline; return ``out_dir``.

    Args:
        pipeline_or_dir: a pipeline object (however it was loaded) or a folder holding one
            (``save_pretrained`` output, a training run's output, a published folder). From a folder,
            the components named in its model_index and its top-level ``*.safetensors`` files are
            copied byte for byte (checkpoints, logs and other files are left out); code files are
            replaced by the installed code.
        out_dir: the repo folder to write; it must be empty or absent unless ``overwrite``.
        spec: a registered spec's name (``"reward_pix2pix"``, ``"instruct_pix2pix"``) or a
            ``PublishSpec``. Default: found from the pipeline's class (a folder's model_index) by
            ``editforge.publishing.detect_spec``; a stock class that an editforge pipeline extends
            (``StableDiffusionInstructPix2PixPipeline``) is taken for that pipeline, so name the stock
            spec (``spec="instruct_pix2pix"``) to publish a plain model.
        repo_id: the Hub id the card's examples use (default: ``<your-name>/<out_dir name>``).
        base_model, datasets, license: card metadata; for a folder with a README.md, its values
            are kept where these are not given (license defaults to apache-2.0).
        training: settings shown as a table in the card (steps, learning rate, reward dropout, ...).
        results: markdown shown in the card's Results section.
        lora_weights: UNet (or transformer) LoRA safetensors file(s) to ship beside the pipeline;
            every key must contain "lora", as ``load_lora_weights`` requires.
        extra_weights: other safetensors file(s) to ship as they are (a widened patch embedding,
            say), at the repo's top level under their own names, and listed on the card.
        card_fields: more template variables (``model_name``, or what a spec's template asks for).
        overwrite: replace the contents of a non-empty ``out_dir``.
        space: also write a Space-ready Gradio app (``app.py``, ``editforge_app.py``, ``requirements.txt``)
            that serves the folder's pipeline in editforge's editing page, so that the folder runs as a
            Space (``upload_folder(..., repo_type="space")``) or locally (``python app.py``). Editing
            (image-to-image) pipelines only.

    Everything is checked before anything is written; the folder is assembled in a temporary folder
    beside ``out_dir`` and moved into place only when complete, so a failure leaves ``out_dir`` as it was.
    """
    out_dir = Path(out_dir)
    source = Path(pipeline_or_dir) if isinstance(pipeline_or_dir, (str, os.PathLike)) else None
    if source is not None and not source.is_dir():
        raise UsageError(f"{source} is not a folder")
    _prepare_out_dir(out_dir, source, overwrite)
    if source is not None:
        index = _read_model_index(source)
        class_name = _index_class_name(index, source)
    else:
        index, class_name = None, type(pipeline_or_dir).__name__
    spec = get_spec(spec) if spec is not None else detect_spec(class_name)
    code = validate_spec(spec)
    _check_class(spec, class_name)
    if space and spec.pipeline_tag != "image-to-image":
        raise UsageError(f"a {spec.pipeline_class} is a {spec.pipeline_tag} pipeline; the Space's editing app (--space)"
                         " serves image-to-image (editing) pipelines only")
    if source is not None:
        _check_folder(spec, source, index)
    else:
        _check_pipeline(spec, pipeline_or_dir)
    for key in card_fields or {}:
        if key in _CARD_RESERVED:
            raise UsageError(f"card_fields[{key!r}] is set by publish_pipeline; pass it as its own argument")
    loras = [_check_lora_file(path) for path in _paths(lora_weights)]
    extras = [_check_weights_file(path) for path in _paths(extra_weights)]
    _check_unique_names(loras + extras)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    known = _card_metadata(source / "README.md") if source is not None else {}
    fields = dict(
        card_fields or {},
        base_model=base_model or known.get("base_model"),
        datasets=datasets or known.get("datasets"),
        license=license or known.get("license") or "apache-2.0",
        training=training,
        results=results,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        if source is not None:
            _stage_from_folder(spec, source, index, staging)
        else:
            pipeline_or_dir.save_pretrained(staging)
        for path in loras + extras:
            shutil.copy2(path, staging / path.name)
        for repo_path, file in code.items():
            shutil.copy2(file, staging / repo_path)
        _rewrite_model_index(spec, staging)
        write_model_card(
            staging,
            spec=spec,
            repo_id=repo_id or f"<your-name>/{out_dir.resolve().name}",
            extra_weight_names=[path.name for path in extras],
            **fields,
        )
        if space:
            write_space_app(staging, title=repo_id or out_dir.resolve().name, trust_remote_code=spec.ships_code)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def write_model_card(
    folder: PathLike,
    *,
    repo_id: str,
    spec: str | PublishSpec | None = None,
    extra_weight_names: Iterable[str] = (),
    **card_fields,
) -> Path:
    """Write ``folder/README.md`` for the pipeline in ``folder`` with its spec's template.

    ``spec`` defaults to the one for the folder's model_index. The card lists the folder's top-level
    ``*.safetensors`` files: as LoRA files (``lora_weight_names``) those whose every key has "lora",
    unless named in ``extra_weight_names``, and the others as other weights (``extra_weight_names``).
    A template that does not show each of them is refused.
    """
    from editforge.model_cards import render_model_card

    folder = Path(folder)
    if spec is None:
        spec = detect_spec(_index_class_name(_read_model_index(folder), folder))
    spec = get_spec(spec)
    loras, extras = _classify_weights(folder, set(extra_weight_names))
    fields = dict(spec.card_fields_from_folder(folder)) if spec.card_fields_from_folder else {}
    fields.update(card_fields)
    try:
        card = render_model_card(spec.template, repo_id=repo_id, lora_weight_names=loras, extra_weight_names=extras,
                                 tags=list(spec.tags), pipeline_tag=spec.pipeline_tag, **fields)
    except ValueError as err:  # an unknown template
        raise UsageError(f"publishing spec {spec.name!r}: {err}") from None
    text = str(card)
    unlisted = [name for name in [*loras, *extras] if name not in text]
    if unlisted:
        raise UsageError(f"model card template {spec.template!r} does not list {unlisted[0]}; a template must show"
                         " every file in lora_weight_names and extra_weight_names")
    card.save(folder / "README.md")
    return folder / "README.md"


SPACE_APP = '''"""A Gradio Space: this folder's pipeline in editforge's editing page (editforge_app.py).

Written by `editforge publish-pipeline --space`. Run it with `pip install -r requirements.txt` and
`python app.py`, or push the folder as a Space (huggingface_hub.upload_folder(repo_id=...,
folder_path=..., repo_type="space")).
"""

from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from editforge_app import build_app

pipe = DiffusionPipeline.from_pretrained(Path(__file__).parent{trust})
pipe.to("cuda" if torch.cuda.is_available() else "cpu")
pipe.set_progress_bar_config(disable=True)
demo = build_app(pipe, {title!r})

if __name__ == "__main__":
    demo.launch()
'''
# What the Space installs; each at least the version installed here, where it is.
SPACE_REQUIREMENTS = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "gradio")


def write_space_app(folder: PathLike, *, title: str, trust_remote_code: bool) -> Path:
    """Make the pipeline folder ``folder`` a Gradio Space: ``app.py`` (loads the folder's pipeline and
    serves ``editforge.app.build_app``'s page), ``editforge_app.py`` (a copy of ``editforge/app.py``,
    which is self-contained), ``requirements.txt``, and ``sdk: gradio`` / ``app_file: app.py`` in the
    card's metadata. Returns the path of ``app.py``."""
    from importlib import metadata

    from huggingface_hub import ModelCard

    folder = Path(folder)
    trust = ", trust_remote_code=True" if trust_remote_code else ""
    (folder / "app.py").write_text(SPACE_APP.format(trust=trust, title=title), encoding="utf-8")
    shutil.copy2(Path(__file__).with_name("app.py"), folder / "editforge_app.py")
    lines = []
    for name in SPACE_REQUIREMENTS:
        try:
            lines.append(f"{name}>={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            lines.append(name)
    (folder / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    card_path = folder / "README.md"
    card = ModelCard.load(card_path)
    card.data.sdk = "gradio"
    card.data.app_file = "app.py"
    card.save(card_path)
    return folder / "app.py"


# --------------------------------------------------------------------------------------------------
# checks (all before anything is written)


def _prepare_out_dir(out_dir: Path, source: Path | None, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder")
    if source is not None and (out_dir.resolve() == source.resolve() or source.resolve() in out_dir.resolve().parents):
        raise UsageError(f"{out_dir} is the pipeline folder or inside it; publish to another folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"{out_dir} is not empty; choose an empty folder or pass overwrite (--overwrite)")


def _read_model_index(folder: Path) -> dict:
    path = folder / "model_index.json"
    if not path.is_file():
        raise UsageError(f"{folder} has no model_index.json: not a diffusers pipeline folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON: {err}") from None


def _index_class_name(index: dict, folder: Path) -> str:
    """``_class_name`` of a model_index: ``"Cls"``, or ``["module", "Cls"]`` for custom code."""
    name = index.get("_class_name")
    if isinstance(name, list) and name:
        name = name[-1]
    if not isinstance(name, str) or not name:
        raise UsageError(f"{folder / 'model_index.json'} names no pipeline class (_class_name)")
    return name


def _check_class(spec: PublishSpec, class_name: str) -> None:
    allowed = {spec.pipeline_class} | ({spec.base_class} if spec.base_class else set())
    if class_name not in allowed:
        raise UsageError(f"a {class_name} cannot be published with spec {spec.name!r}, which publishes"
                         f" {spec.pipeline_class} pipelines")


def _stock_hint(spec: PublishSpec, class_name: str) -> str:
    others = [s for s in stock_alternatives(class_name) if s is not spec]
    if not others:
        return ""
    return f"; to publish it as a plain {class_name}, pass spec={others[0].name!r} (--spec {others[0].name})"


def _check_pipeline(spec: PublishSpec, pipeline) -> None:
    class_name = type(pipeline).__name__
    for folder, code in spec.code_components.items():
        component = getattr(pipeline, folder, None)
        if component is None:
            raise UsageError(f"{class_name} has no {folder} component; nothing to publish as {spec.name}"
                             f" (a {spec.pipeline_class} needs a {code.class_name} there){_stock_hint(spec, class_name)}")
        if type(component).__name__ != code.class_name:
            raise UsageError(f"the pipeline's {folder} is a {type(component).__name__}; spec {spec.name!r} ships"
                             f" the code of {code.class_name}")
    components = getattr(pipeline, "components", None) or {}
    for name, component in components.items():
        if getattr(component, "peft_config", None):
            raise UsageError(
                f"the pipeline's {name} carries LoRA adapters; publish the base pipeline and pass the LoRA file"
                " (lora_weights=...), or merge it first with pipe.fuse_lora(); pipe.unload_lora_weights()"
            )


def _check_folder(spec: PublishSpec, source: Path, index: dict) -> None:
    class_name = _index_class_name(index, source)
    for folder, code in spec.code_components.items():
        required = f"{folder}/{code.weights}" if code.weights else f"{folder}/config.json"
        if folder not in index or not (source / required).is_file():
            hint = code.hint or f"a {spec.pipeline_class} needs a {code.class_name} there"
            raise UsageError(f"{source} has no {folder} component ({required}); {hint}{_stock_hint(spec, class_name)}")


def _paths(value) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(v) for v in value]


def _safetensors_keys(path: Path, what: str) -> list[str]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise UsageError(f"{what} {path} not found")
    if path.suffix != ".safetensors":
        raise UsageError(f"{what} {path} is not a .safetensors file (weights are published as safetensors only)")
    try:
        with safe_open(str(path), framework="numpy") as weights:
            return list(weights.keys())
    except (SafetensorError, OSError) as err:
        raise UsageError(f"{what} {path} is not a readable safetensors file: {err}") from None


def _check_lora_file(path: Path) -> Path:
    keys = _safetensors_keys(path, "LoRA weights")
    stray = [key for key in keys if "lora" not in key]
    if not keys or stray:
        raise UsageError(f"{path} is not a LoRA file: key {stray[0] if stray else '(none)'!r} has no 'lora' in it"
                         " (load_lora_weights would reject it); ship other trained weights with extra_weights=[...]"
                         " (--extra-weights)")
    return path


def _check_weights_file(path: Path) -> Path:
    if not _safetensors_keys(path, "weights file"):
        raise UsageError(f"weights file {path} holds no tensors")
    return path


def _check_unique_names(paths: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in paths:
        if path.name in seen and seen[path.name].resolve() != path.resolve():
            raise UsageError(f"{seen[path.name]} and {path} would both be published as {path.name}; rename one")
        seen[path.name] = path


def _classify_weights(folder: Path, extra_names: set[str]) -> tuple[list[str], list[str]]:
    """Top-level safetensors files of ``folder``: (LoRA files, other weight files)."""
    from safetensors import safe_open

    loras, extras = [], []
    for path in sorted(folder.glob("*.safetensors")):
        if path.name not in extra_names:
            with safe_open(str(path), framework="numpy") as weights:
                keys = list(weights.keys())
            if keys and all("lora" in key for key in keys):
                loras.append(path.name)
                continue
        extras.append(path.name)
    return loras, extras


# --------------------------------------------------------------------------------------------------
# staging


def _stage_from_folder(spec: PublishSpec, source: Path, index: dict, staging: Path) -> None:
    def skip(folder: str, names: list[str]) -> list[str]:
        # code of a code-carrying component comes from the installed package; other code stays
        # (and is refused by _rewrite_model_index)
        replaced = Path(folder).resolve().parent == source.resolve() and Path(folder).name in spec.code_components
        return [n for n in names if n == "__pycache__" or (replaced and n.endswith(".py"))]

    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or not (source / name).is_dir():
            continue
        shutil.copytree(source / name, staging / name, ignore=skip, dirs_exist_ok=True)
    for weights in source.glob("*.safetensors"):
        if weights.is_file():
            shutil.copy2(weights, staging / weights.name)
    shutil.copy2(source / "model_index.json", staging / "model_index.json")


def _rewrite_model_index(spec: PublishSpec, staging: Path) -> None:
    index_path = staging / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    for name, entry in index.items():
        if name.startswith("_") or name in spec.code_components or not isinstance(entry, list):
            continue
        library = entry[0]
        # a dotted module path (editforge.pipelines..., diffusers_modules...) or a code file is custom code
        if library is not None and ("." in library or (staging / name / f"{library}.py").exists()):
            allowed = (f"only the {', '.join(spec.code_components)} component may be custom code"
                       if spec.code_components else f"spec {spec.name!r} ships no component code")
            raise UsageError(f"component {name!r} comes from {library!r}, which a Hub user cannot load; {allowed}")
    if spec.ships_code:
        index["_class_name"] = [PIPELINE_MODULE, spec.pipeline_class]
        for folder, code in spec.code_components.items():
            index[folder] = [code.module, code.class_name]
    else:
        index["_class_name"] = spec.pipeline_class
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _card_metadata(readme: Path) -> dict:
    """base_model, datasets and license from an existing model card's YAML header."""
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    data = ModelCard.load(readme).data
    return {"base_model": data.base_model, "datasets": data.datasets, "license": data.license}
