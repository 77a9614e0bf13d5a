"""LoRA adapters on any supported denoiser through PEFT, saved and loaded in diffusers' format.

One set of functions for every denoiser editforge trains: a ``UNet2DConditionModel``
(InstructPix2Pix, SD1.5 / SDXL) and an ``SD3Transformer2DModel`` (UltraEdit, SD3). The denoiser's
class picks the default target modules, the pipeline whose LoRA loader writes and reads the file,
and that loader's keyword (``unet_lora_layers`` / ``transformer_lora_layers``); the file is what
``pipe.load_lora_weights(folder, weight_name=LORA_WEIGHT_NAME)`` loads, with the adapter's
config (rank, alpha, targets) in its metadata.

The LoRA file holds only LoRA keys (``load_lora_weights`` rejects any other key); every other
trained weight (a conditioner, a widened ``conv_in`` or ``pos_embed``, a text encoder) is saved on
its own.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "default"


@dataclass(frozen=True)
class LoraFamily:
    """How one kind of denoiser takes a LoRA adapter."""

    denoiser_class: str          # a diffusers model class (subclasses count)
    component: str               # the pipeline component, and the prefix of save_lora_weights' keywords
    targets: tuple[str, ...]     # default PEFT target modules
    pipeline_class: str          # default pipeline whose LoRA loader saves and loads the file
    diffusers_keys: bool         # convert PEFT key names to diffusers' (lora.down / lora.up) on saving


# Targets as diffusers' scripts choose them: train_instruct_pix2pix / train_text_to_image_lora for
# the UNet, train_dreambooth_lora_sd3 for the SD3 transformer (its joint attention: image and
# context projections).
LORA_FAMILIES = (
    LoraFamily("UNet2DConditionModel", "unet", ("to_k", "to_q", "to_v", "to_out.0"),
               "StableDiffusionInstructPix2PixPipeline", diffusers_keys=True),
    LoraFamily("SD3Transformer2DModel", "transformer",
               ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v"),
               "StableDiffusion3Pipeline", diffusers_keys=False),
)


def lora_family(denoiser) -> LoraFamily:
    """The :class:`LoraFamily` of ``denoiser``; a ``TypeError`` naming the supported classes if none."""
    import diffusers

    for family in LORA_FAMILIES:
        if isinstance(denoiser, getattr(diffusers, family.denoiser_class)):
            return family
    supported = ", ".join(f.denoiser_class for f in LORA_FAMILIES)
    raise TypeError(f"LoRA is not supported for a {type(denoiser).__name__}; supported denoisers: {supported}")


def default_lora_targets(denoiser) -> tuple[str, ...]:
    """The PEFT target modules :func:`add_lora` uses for ``denoiser`` when given none."""
    return lora_family(denoiser).targets


def _pipeline_class(family: LoraFamily, pipeline_class):
    import diffusers

    pipeline_class = pipeline_class or getattr(diffusers, family.pipeline_class)
    keyword = f"{family.component}_lora_layers"
    if keyword not in inspect.signature(pipeline_class.save_lora_weights).parameters:
        raise TypeError(
            f"{pipeline_class.__name__}'s LoRA loader has no {keyword!r}: a {family.denoiser_class} LoRA needs a "
            f"pipeline with a {family.component!r} component, such as {family.pipeline_class}"
        )
    return pipeline_class


def _adapter_config(denoiser):
    config = getattr(denoiser, "peft_config", {}).get(ADAPTER_NAME)
    if config is None:
        raise ValueError(f"this {type(denoiser).__name__} carries no LoRA adapter: call add_lora first")
    return config


def add_lora(denoiser, rank: int, alpha: float | None = None, targets=None, dropout: float = 0.0,
             init_lora_weights="gaussian") -> None:
    """Freeze ``denoiser`` and give it a trainable LoRA adapter (PEFT, adapter ``"default"``).

    ``alpha`` defaults to ``rank`` (scale 1); ``targets`` to :func:`default_lora_targets`. PEFT's
    ``"gaussian"`` init starts ``lora_B`` at zero, so the adapted model starts as the base model.
    """
    from peft import LoraConfig

    family = lora_family(denoiser)
    targets = list(family.targets if targets is None else targets)
    names = [name for name, _ in denoiser.named_modules()]  # PEFT's match: the whole name or its last parts
    unknown = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unknown:
        from editforge.errors import UsageError

        raise UsageError(f"--lora_target_modules: no module of the {type(denoiser).__name__} is named {unknown}")
    denoiser.requires_grad_(False)
    denoiser.add_adapter(LoraConfig(
        r=rank, lora_alpha=alpha or rank, lora_dropout=dropout, init_lora_weights=init_lora_weights,
        target_modules=targets,
    ))


def lora_state_dict(denoiser) -> dict:
    """The adapter's weights under the key names the denoiser's pipeline saves (no prefix)."""
    from peft.utils import get_peft_model_state_dict

    family = lora_family(denoiser)
    _adapter_config(denoiser)
    state = get_peft_model_state_dict(denoiser, adapter_name=ADAPTER_NAME)
    if family.diffusers_keys:
        from diffusers.utils import convert_state_dict_to_diffusers

        converted = convert_state_dict_to_diffusers(state)
        # diffusers renames only the linear layers' keys; with convolutions targeted too (--lora_target_modules)
        # the names would be mixed, which load_lora_weights misreads: such a file keeps PEFT's names throughout
        if not any(".lora_A." in key or ".lora_B." in key for key in converted):
            state = converted
    return state


def save_lora(denoiser, folder: str | Path, pipeline_class=None) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` with the pipeline's LoRA saver (LoRA keys
    and the adapter's config as metadata); return its path. ``pipeline_class`` defaults by denoiser:
    ``StableDiffusionInstructPix2PixPipeline`` for a UNet, ``StableDiffusion3Pipeline`` for an SD3
    transformer; any pipeline whose saver takes the same component works (e.g. SDXL's)."""
    family = lora_family(denoiser)
    pipeline_class = _pipeline_class(family, pipeline_class)
    metadata = _adapter_config(denoiser).to_dict()  # keeps alpha / rank / targets
    pipeline_class.save_lora_weights(
        folder,
        weight_name=LORA_WEIGHT_NAME,
        **{f"{family.component}_lora_layers": lora_state_dict(denoiser),
           f"{family.component}_lora_adapter_metadata": metadata},
    )
    return Path(folder) / LORA_WEIGHT_NAME


def load_lora(denoiser, folder: str | Path, pipeline_class=None) -> None:
    """Load a file written by :func:`save_lora` into a denoiser that already carries its adapter
    (resuming): every adapter weight is replaced, exactly. Raises ``ValueError`` when the file's
    adapter and the denoiser's differ (keys either side, or shapes)."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    family = lora_family(denoiser)
    pipeline_class = _pipeline_class(family, pipeline_class)
    _adapter_config(denoiser)
    loaded = pipeline_class.lora_state_dict(str(folder), weight_name=LORA_WEIGHT_NAME, return_lora_metadata=True)
    prefix = f"{family.component}."
    state = {k.removeprefix(prefix): v for k, v in loaded[0].items() if k.startswith(prefix)}
    state = convert_unet_state_dict_to_peft(state)
    expected = set(get_peft_model_state_dict(denoiser, adapter_name=ADAPTER_NAME))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"the LoRA in {folder} does not match this {type(denoiser).__name__}'s adapter: "
            f"{len(missing)} of its weights missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unknown (e.g. {unexpected[:2]})"
        )
    try:
        set_peft_model_state_dict(denoiser, state, adapter_name=ADAPTER_NAME)
    except RuntimeError as error:  # shape mismatch: another rank
        raise ValueError(f"the LoRA in {folder} does not fit this {type(denoiser).__name__}'s adapter: {error}") from error
