"""Publishing specs: what ``editforge.hub.publish_pipeline`` writes for each kind of pipeline.

A :class:`PublishSpec` says how one pipeline class becomes a Hub repo folder:

* ``pipeline_class`` and, for an editforge pipeline, ``pipeline_source``: the file of
  ``editforge.pipelines`` shipped as the repo's ``pipeline.py`` (model_index
  ``_class_name: ["pipeline", <class>]``). ``None`` is a stock diffusers class: model_index keeps
  it and no code is copied, so the repo loads with no trust flag;
* ``code_components``: component folders that carry code, ``folder -> ComponentCode(source file,
  module name, class name)``; the source is shipped as ``<folder>/<module>.py`` and model_index
  gets ``<folder>: [<module>, <class>]``;
* ``template`` and ``tags``: the model card (``model_cards/templates/<template>.md``);
  ``card_fields_from_folder(staged_folder) -> dict`` adds template fields read from the staged
  repo (the conditioner's size, say);
* ``base_class``: the stock class ``pipeline_class`` extends. Without ``spec=``, a pipeline of that
  stock class is taken for this spec (and refused, naming the missing component, with a hint to the
  stock spec): a reward model that lost its conditioner is never published as a plain model by
  accident.
* ``auto_detect``: whether :func:`detect_spec` may pick this spec for its class. One class can have
  several stock specs (a ``StableDiffusionPipeline`` is published as ``diffusion_dpo`` when nothing
  is named, or as ``text_to_image``); the others set ``auto_detect=False`` and are chosen by name.

LoRA files and other weight files (a widened patch embedding, say) are not part of a spec: they
are arguments of ``publish_pipeline`` (``lora_weights=``, ``extra_weights=``), checked and listed on
the card whatever the spec.

Code files may import sibling files of their package directly (``from .x import y``): those are
shipped beside them, as diffusers copies only an entry file's direct relative imports.

Specs are registered by name in :data:`SPECS`, in this module only. Adding a pipeline is one
``register_spec(PublishSpec(...))`` below plus its card template; nothing else changes.

Only the standard library is imported at module level (``editforge.hub`` and the CLI import this
module; safetensors and the card renderer are imported where they are used).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from editforge.errors import UsageError

CODE_PACKAGE = "editforge.pipelines"
PIPELINE_MODULE = "pipeline"  # -> pipeline.py at the repo root, model_index ["pipeline", <class>]
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # what ModelMixin.save_pretrained writes

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ComponentCode:
    """The code of one pipeline component: ``source`` (a file of the spec's code package) is shipped
    as ``<folder>/<module>.py``, whose ``class_name`` loads the component. ``weights`` is the file the
    component folder must hold (``None``: nothing required); ``hint`` says how to add a missing one."""

    source: str
    module: str
    class_name: str
    weights: str | None = WEIGHTS_NAME
    hint: str = ""


@dataclass(frozen=True)
class PublishSpec:
    """How one pipeline class is published (see the module docstring)."""

    name: str
    pipeline_class: str
    template: str
    pipeline_source: str | None = None
    code_components: Mapping[str, ComponentCode] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    card_fields_from_folder: Callable[[Path], Mapping[str, object]] | None = None
    base_class: str | None = None
    pipeline_tag: str = "image-to-image"
    code_package: str = CODE_PACKAGE
    auto_detect: bool = True

    def __post_init__(self):
        components = {}
        for folder, code in dict(self.code_components).items():
            if isinstance(code, (tuple, list)):
                code = ComponentCode(*code)
            if not isinstance(code, ComponentCode):
                raise UsageError(f"spec {self.name!r}: code_components[{folder!r}] must be a ComponentCode or a"
                                 f" (source, module, class_name) tuple, got {code!r}")
            components[folder] = code
        object.__setattr__(self, "code_components", MappingProxyType(components))
        object.__setattr__(self, "tags", tuple([self.tags] if isinstance(self.tags, str) else self.tags))
        self._check_names()

    @property
    def ships_code(self) -> bool:
        return self.pipeline_source is not None

    def _check_names(self) -> None:
        def refuse(message: str):
            raise UsageError(f"publishing spec {self.name!r}: {message}")

        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise UsageError(f"publishing spec name {self.name!r}: use lowercase letters, digits and _ (e.g. sd3_pix2pix)")
        for what, value in (("pipeline_class", self.pipeline_class), ("base_class", self.base_class)):
            if value is not None and not (isinstance(value, str) and value.isidentifier()):
                refuse(f"{what} {value!r} is not a class name")
        if not isinstance(self.template, str) or not self.template or "/" in self.template or self.template.endswith(".md"):
            refuse(f"template {self.template!r} must be a template name (model_cards/templates/<name>.md)")
        if self.pipeline_source is not None and not _is_source_name(self.pipeline_source):
            refuse(f"pipeline_source {self.pipeline_source!r} must be a file name of {self.code_package}, like pipeline_x.py")
        if self.pipeline_source is None and self.code_components:
            refuse("a stock diffusers pipeline (pipeline_source=None) cannot carry component code;"
                   " give the pipeline's own source file")
        if self.pipeline_source is None and self.base_class is not None:
            refuse("base_class is for a pipeline class that extends a stock one (pipeline_source given)")
        for folder, code in self.code_components.items():
            if not (isinstance(folder, str) and folder.isidentifier() and not folder.startswith("_")):
                refuse(f"component folder {folder!r} is not a component name")
            if not _is_source_name(code.source):
                refuse(f"{folder}: source {code.source!r} must be a file name of {self.code_package}")
            if not code.module.isidentifier() or code.module == PIPELINE_MODULE:
                refuse(f"{folder}: module {code.module!r} must be a module name other than {PIPELINE_MODULE!r}")
            if not code.class_name.isidentifier():
                refuse(f"{folder}: class_name {code.class_name!r} is not a class name")
        if self.card_fields_from_folder is not None and not callable(self.card_fields_from_folder):
            refuse("card_fields_from_folder must be a function of the staged folder")
        if not isinstance(self.auto_detect, bool):
            refuse(f"auto_detect must be True or False, got {self.auto_detect!r}")


def _is_source_name(name) -> bool:
    return isinstance(name, str) and name.endswith(".py") and name[:-3].isidentifier()


# --------------------------------------------------------------------------------------------------
# the registry


SPECS: dict[str, PublishSpec] = {}


def register_spec(spec: PublishSpec, *, replace: bool = False) -> PublishSpec:
    """Add ``spec`` to :data:`SPECS` under its name (files are checked when it publishes: :func:`validate_spec`)."""
    if not isinstance(spec, PublishSpec):
        raise UsageError(f"register_spec takes a PublishSpec, got {type(spec).__name__}")
    if spec.name in SPECS and not replace:
        raise UsageError(f"publishing spec {spec.name!r} is already registered (pass replace=True to replace it)")
    SPECS[spec.name] = spec
    return spec


def spec_names() -> list[str]:
    return sorted(SPECS)


def get_spec(spec: str | PublishSpec) -> PublishSpec:
    """A registered spec by name, or ``spec`` itself when it is a :class:`PublishSpec`."""
    if isinstance(spec, PublishSpec):
        return spec
    if isinstance(spec, str) and spec in SPECS:
        return SPECS[spec]
    raise UsageError(f"unknown publishing spec {spec!r}; known: {', '.join(spec_names())}")


def detect_spec(class_name: str) -> PublishSpec:
    """The registered spec for a pipeline class (a pipeline's type name or model_index ``_class_name``).

    In order: the spec that ships code for ``class_name``; the spec whose ``base_class`` it is (the
    pipeline then lacks that spec's components, and publishing says which); the stock spec of
    ``class_name``. Only specs with ``auto_detect`` take part. Two candidates at one step is an error
    naming both.
    """
    detectable = [s for s in SPECS.values() if s.auto_detect]
    steps = (
        [s for s in detectable if s.ships_code and s.pipeline_class == class_name],
        [s for s in detectable if s.ships_code and s.base_class == class_name],
        [s for s in detectable if not s.ships_code and s.pipeline_class == class_name],
    )
    for candidates in steps:
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            names = ", ".join(repr(s.name) for s in candidates)
            raise UsageError(f"several publishing specs fit a {class_name}: {names}; choose one (spec=..., --spec)")
    named = [s.name for s in SPECS.values() if class_name in (s.pipeline_class, s.base_class)]
    if named:
        raise UsageError(f"a {class_name} is published by naming its spec: {', '.join(named)} (spec=..., --spec)")
    known = ", ".join(f"{s.name} ({s.pipeline_class})" for s in sorted(SPECS.values(), key=lambda s: s.name))
    raise UsageError(f"no publishing spec for a {class_name} pipeline; known specs: {known}."
                     " Add one in editforge/publishing.py, or pass spec=...")


def stock_alternatives(class_name: str) -> list[PublishSpec]:
    """Registered stock specs that publish ``class_name`` as it is (for hints in error messages), the
    one :func:`detect_spec` picks first."""
    found = [s for s in SPECS.values() if not s.ships_code and s.pipeline_class == class_name]
    return sorted(found, key=lambda s: not s.auto_detect)


# --------------------------------------------------------------------------------------------------
# checking a spec's files


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise UsageError(f"code package {package!r} is not installed (or is not a package)")
    return Path(list(found.submodule_search_locations)[0])


def _relative_imports(path: Path) -> list[str]:
    """Modules ``path`` imports with ``from .x import y``; other relative forms are refused, since
    diffusers copies only direct sibling files named that way."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1 or not node.module or "." in node.module:
                written = "." * node.level + (node.module or "")
                raise UsageError(f"{path} imports from {written!r}: published code may import only sibling files,"
                                 " as 'from .name import ...' (diffusers copies nothing else)")
            found.append(node.module)
    return sorted(set(found))


def code_files(spec: PublishSpec) -> dict[str, Path]:
    """Repo path -> source file, for every code file ``spec`` ships (sibling imports included)."""
    if not spec.ships_code:
        return {}
    root = package_dir(spec.code_package)
    files: dict[str, Path] = {}

    def ship(source_name: str, folder: str, module: str) -> None:
        source = root / source_name
        if not source.is_file():
            raise UsageError(f"publishing spec {spec.name!r}: {source_name} is not a file of {spec.code_package} ({root})")
        shipped = {f"{folder}{module}.py": source}
        for sibling in _relative_imports(source):
            sibling_source = root / f"{sibling}.py"
            if not sibling_source.is_file():
                raise UsageError(f"{source} imports .{sibling}, which is not a file of {spec.code_package}")
            if _relative_imports(sibling_source):
                raise UsageError(f"{sibling_source} (imported by {source_name}) has relative imports of its own;"
                                 " diffusers copies only the entry file's direct imports")
            shipped[f"{folder}{sibling}.py"] = sibling_source
        for path, file in shipped.items():
            if path in files and files[path] != file:
                raise UsageError(f"publishing spec {spec.name!r}: two different files would be shipped as {path}")
            files[path] = file

    ship(spec.pipeline_source, "", PIPELINE_MODULE)
    for folder, code in spec.code_components.items():
        ship(code.source, f"{folder}/", code.module)
    return files


def template_path(spec: PublishSpec) -> Path:
    from editforge.model_cards import render  # the folder render_model_card reads

    path = render.TEMPLATES_DIR / f"{spec.template}.md"
    if not path.is_file():
        raise UsageError(f"publishing spec {spec.name!r}: model card template {spec.template!r} not found ({path});"
                         f" available: {', '.join(render.template_names())}")
    return path


def validate_spec(spec: PublishSpec) -> dict[str, Path]:
    """Check that ``spec``'s code files and card template exist; return :func:`code_files`."""
    template_path(spec)
    return code_files(spec)


# --------------------------------------------------------------------------------------------------
# card helpers and the registered specs


def count_parameters(weights: Path) -> int:
    """Number of parameters in a safetensors file (read from its header)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), framework="numpy") as tensors:
        for key in tensors.keys():
            count = 1
            for size in tensors.get_slice(key).get_shape():
                count *= size
            total += count
    return total


def reward_conditioner_summary(folder: Path) -> dict:
    """Card fields of the reward_pix2pix template: the conditioner's size and widths."""
    config = json.loads((folder / "reward_conditioner" / "config.json").read_text(encoding="utf-8"))
    return {
        "conditioner_parameters": f"{count_parameters(folder / 'reward_conditioner' / WEIGHTS_NAME):,}",
        "time_embed_dim": config["time_embed_dim"],
        "latent_channels": config["latent_channels"],
        "feedback_dim": config["feedback_dim"],
        "perspectives": config.get("perspectives", []),
    }


register_spec(PublishSpec(
    name="reward_pix2pix",
    pipeline_class="RewardConditionedPix2PixPipeline",
    base_class="StableDiffusionInstructPix2PixPipeline",
    pipeline_source="pipeline_reward_pix2pix.py",
    code_components={
        "reward_conditioner": ComponentCode(
            "reward_conditioner.py", "reward_module", "RewardConditioner",
            hint="add one with RewardConditioner.from_unet(unet) before publishing",
        ),
    },
    template="reward_pix2pix",
    tags=("image-editing", "instruct-pix2pix", "multi-reward"),
    card_fields_from_folder=reward_conditioner_summary,
))

register_spec(PublishSpec(
    name="instruct_pix2pix",
    pipeline_class="StableDiffusionInstructPix2PixPipeline",
    template="instruct_pix2pix",
    tags=("image-editing", "instruct-pix2pix"),
))

register_spec(PublishSpec(
    name="diffusion_dpo",
    pipeline_class="StableDiffusionPipeline",
    template="diffusion_dpo",
    tags=("text-to-image", "diffusion-dpo"),
    pipeline_tag="text-to-image",
))

register_spec(PublishSpec(
    name="text_to_image",
    pipeline_class="StableDiffusionPipeline",
    template="text_to_image",
    tags=("text-to-image", "stable-diffusion"),
    pipeline_tag="text-to-image",
    auto_detect=False,  # a StableDiffusionPipeline folder without a spec stays diffusion_dpo's
))

register_spec(PublishSpec(
    name="diffusion_dpo_sdxl",
    pipeline_class="StableDiffusionXLPipeline",
    template="diffusion_dpo",
    tags=("text-to-image", "diffusion-dpo", "stable-diffusion-xl"),
    pipeline_tag="text-to-image",
))


def sd3_pix2pix_summary(folder: Path) -> dict:
    """Card fields of the sd3_instruct_pix2pix template: the transformer's inputs and the latent convention."""
    transformer = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    latent = vae.get("latent_channels", 16)
    return {
        "in_channels": transformer["in_channels"],
        "latent_channels": latent,
        "takes_mask": transformer["in_channels"] == 3 * latent,
        "image_latents_normalization": index.get("image_latents_normalization", "unscaled"),
        "has_t5": bool(index.get("text_encoder_3") and index["text_encoder_3"][0]),
    }


register_spec(PublishSpec(
    name="sd3_instruct_pix2pix",
    pipeline_class="StableDiffusion3InstructPix2PixPipeline",
    pipeline_source="pipeline_sd3_instruct_pix2pix.py",
    template="sd3_instruct_pix2pix",
    tags=("image-editing", "instruct-pix2pix", "sd3", "ultraedit"),
    card_fields_from_folder=sd3_pix2pix_summary,
))
