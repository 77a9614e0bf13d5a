"""LoRA adapters on the UNet through PEFT, saved in diffusers' format.

The LoRA file holds only LoRA keys (``load_lora_weights`` rejects any other key); every other
trained weight (a conditioner, a widened ``conv_in``, a text encoder) is saved on its own.
"""

from __future__ import annotations

from pathlib import Path

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
UNET_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


def add_unet_lora(unet, rank: int, alpha: int | None = None, targets=UNET_LORA_TARGETS) -> None:
    """Freeze the UNet and give it a trainable LoRA adapter on its attention projections."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(targets))
    )


def unet_lora_state_dict(unet) -> dict:
    """The adapter's weights under diffusers' key names."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_unet_lora(unet, folder: str | Path, pipeline_class=None) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors``; return its path."""
    if pipeline_class is None:
        from diffusers import StableDiffusionInstructPix2PixPipeline as pipeline_class
    pipeline_class.save_lora_weights(
        folder,
        unet_lora_layers=unet_lora_state_dict(unet),
        weight_name=LORA_WEIGHT_NAME,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),  # keeps alpha / rank
    )
    return Path(folder) / LORA_WEIGHT_NAME


def load_unet_lora(unet, folder: str | Path, pipeline_class=None) -> None:
    """Load a saved adapter back into a UNet that already carries one (resuming)."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    if pipeline_class is None:
        from diffusers import StableDiffusionInstructPix2PixPipeline as pipeline_class
    state, _ = pipeline_class.lora_state_dict(str(folder), weight_name=LORA_WEIGHT_NAME)
    state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    incompatible = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(state), adapter_name="default")
    unexpected = getattr(incompatible, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"LoRA checkpoint {folder} has keys this UNet does not: {unexpected[:3]}")
