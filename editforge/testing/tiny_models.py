"""Tiny random models, built offline, for tests, benchmarks and the demo.

Nothing here downloads anything: the CLIP tokenizer is built from an in-memory vocabulary and
every model from a small config with seeded random weights. A 2-step 32x32 InstructPix2Pix
pipeline built from :func:`tiny_instruct_pix2pix_components` runs in well under a second on CPU.
"""

from __future__ import annotations

import re
import string
from typing import Iterable

import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_CHARACTERS = string.ascii_lowercase + string.digits + ".,;:!?'-()/"


def build_clip_tokenizer(words: Iterable[str] = (), model_max_length: int = 77):
    """A ``CLIPTokenizer`` whose vocabulary holds every character and every word in ``words``.

    Characters come in both CLIP forms (``a`` and the word-final ``a</w>``), so any lowercase
    text tokenizes; merges are added until each given word is a single token, so a tiny text
    encoder sees words, not letters.
    """
    from transformers import CLIPTokenizer

    words = sorted({w for text in words for w in re.findall(r"[a-z]+", text.lower())})
    vocab = {BOS: 0, EOS: 1}
    for ch in _CHARACTERS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    # Greedy: merge the first two pieces of every word that is not yet one token, until all are.
    for _ in range(64):
        tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
        added = False
        for word in words:
            pieces = tokenizer.tokenize(word)
            if len(pieces) > 1 and (pieces[0], pieces[1]) not in merges:
                merges.append((pieces[0], pieces[1]))
                vocab.setdefault(pieces[0] + pieces[1], len(vocab))
                added = True
        if not added:
            return tokenizer
    raise RuntimeError("could not make every word a single token")  # pragma: no cover


def synthetic_world_words() -> list[str]:
    """Every word the synthetic world writes in instructions and captions."""
    from editforge.dataset_builders.synthetic.edits import STYLES, TEMPLATES
    from editforge.dataset_builders.synthetic.world import (
        BACKGROUND_COLOURS,
        SHAPE_COLOURS,
        SHAPE_KINDS,
        SLOT_NAMES,
    )

    texts = [*SHAPE_COLOURS, *BACKGROUND_COLOURS, *SHAPE_KINDS, *SLOT_NAMES]
    texts += [t.replace("{", " ").replace("}", " ") for templates in TEMPLATES.values() for t in templates]
    texts += [p for style in STYLES.values() for p in (*style.phrases, style.caption_suffix)]
    texts += ["a an and on at the empty background none image photo of"]
    return sorted({w for text in texts for w in text.replace(",", " ").split() if w.isalpha()})


def tiny_clip_text_encoder(vocab_size: int, hidden_size: int = 32, seed: int = 0, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        vocab_size=vocab_size,
        projection_dim=hidden_size,
        layer_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config).eval()


def tiny_unet(in_channels: int = 8, cross_attention_dim: int = 32, sample_size: int = 16, seed: int = 0):
    """A tiny ``UNet2DConditionModel`` shaped like InstructPix2Pix's (8 input channels)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    ).eval()


def tiny_vae(latent_channels: int = 4, seed: int = 0, **extra):
    """A tiny ``AutoencoderKL``: 2x down-sampling, 32 and 64 channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=16,
        **extra,
    ).eval()


def tiny_instruct_pix2pix_components(seed: int = 0, words: Iterable[str] | None = None) -> dict:
    """Components of a ``StableDiffusionInstructPix2PixPipeline``: tokenizer, text encoder,
    UNet (8 input channels), VAE and an Euler-ancestral scheduler, like timbrooks/instruct-pix2pix.
    """
    from diffusers import EulerAncestralDiscreteScheduler

    tokenizer = build_clip_tokenizer(synthetic_world_words() if words is None else words)
    return {
        "unet": tiny_unet(seed=seed),
        "scheduler": EulerAncestralDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
        ),
        "vae": tiny_vae(seed=seed),
        "text_encoder": tiny_clip_text_encoder(len(tokenizer), seed=seed),
        "tokenizer": tokenizer,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_instruct_pix2pix_pipeline(seed: int = 0):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(**tiny_instruct_pix2pix_components(seed), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_text_to_image_pipeline(seed: int = 0):
    """A tiny ``StableDiffusionPipeline`` (SD1.5-shaped: 4-channel UNet, the components above)."""
    from diffusers import StableDiffusionPipeline

    components = tiny_instruct_pix2pix_components(seed)
    components["unet"] = tiny_unet(in_channels=4, seed=seed)
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0):
    """A tiny ``StableDiffusionXLPipeline``: two CLIP text encoders (the second with projection) and a
    UNet with SDXL's added conditions (pooled text and the six size / crop time ids)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = build_clip_tokenizer(synthetic_world_words())
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=16,
    ).eval()
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(seed=seed), text_encoder=tiny_clip_text_encoder(len(tokenizer), seed=seed),
        text_encoder_2=tiny_clip_text_encoder(len(tokenizer), seed=seed + 1, with_projection=True),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         timestep_spacing="leading", steps_offset=1),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_transformer(in_channels: int = 4, out_channels: int = 4, num_layers: int = 1, seed: int = 0):
    """A tiny ``SD3Transformer2DModel`` (patch size 1, 4 heads of 8, joint and pooled widths of the
    tiny CLIP pair: 32 and 64). With ``num_layers`` >= 2 the blocks before the last also carry the
    context output projection (``attn.to_add_out``); the last block is context-pre-only, as in SD3."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=in_channels,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=out_channels,
    ).eval()


def tiny_sd3_components(seed: int = 0, in_channels: int = 4, latent_channels: int = 4, num_layers: int = 1,
                        words: Iterable[str] | None = None) -> dict:
    """Components of a ``StableDiffusion3Pipeline`` without the T5 encoder (SD3 allows it to be
    absent and then uses zeros). ``in_channels`` can be widened for image-conditioned variants
    (UltraEdit concatenates noisy, image and mask latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer = build_clip_tokenizer(synthetic_world_words() if words is None else words)
    transformer = tiny_sd3_transformer(in_channels, latent_channels, num_layers=num_layers, seed=seed)
    return {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": tiny_vae(latent_channels=latent_channels, seed=seed, shift_factor=0.0609, scaling_factor=1.5035),
        "text_encoder": tiny_clip_text_encoder(len(tokenizer), seed=seed, with_projection=True),
        "tokenizer": tokenizer,
        "text_encoder_2": tiny_clip_text_encoder(len(tokenizer), seed=seed + 1, with_projection=True),
        "tokenizer_2": tokenizer,
        "text_encoder_3": None,
        "tokenizer_3": None,
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sd3_pipeline(seed: int = 0, latent_channels: int = 16, num_layers: int = 2, shift: float = 3.0,
                      words: Iterable[str] | None = None):
    """A full ``StableDiffusion3Pipeline`` of tiny random components, built offline: the two CLIP
    encoders with their tokenizers, no T5 (``text_encoder_3=None``), a transformer of
    ``num_layers`` joint blocks, a VAE with SD3's 16 latent channels (and its scaling and shift
    factors) and a ``FlowMatchEulerDiscreteScheduler`` with SD3's ``shift=3.0``. Two steps at
    32x32 run in well under a second on CPU."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    components = tiny_sd3_components(seed, in_channels=latent_channels, latent_channels=latent_channels,
                                     num_layers=num_layers, words=words)
    components["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=shift)
    pipe = StableDiffusion3Pipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_reward_pix2pix_pipeline(seed: int = 0, perturb: float = 0.0):
    """A ``RewardConditionedPix2PixPipeline`` on the tiny InstructPix2Pix components.

    The conditioner starts untrained (zero-initialised outputs: the pipeline then reproduces
    InstructPix2Pix exactly). ``perturb`` > 0 adds seeded Gaussian noise of that scale to every
    conditioner weight, standing in for a trained one whose rewards change the images.
    """
    from editforge.pipelines import RewardConditionedPix2PixPipeline, RewardConditioner

    components = tiny_instruct_pix2pix_components(seed)
    conditioner = RewardConditioner.from_unet(
        components["unet"], feedback_dim=components["text_encoder"].config.hidden_size
    )
    if perturb:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for parameter in conditioner.parameters():
                parameter.add_(perturb * torch.randn(parameter.shape, generator=generator))
    pipe = RewardConditionedPix2PixPipeline(
        **components, reward_conditioner=conditioner, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_unet_lora(unet, folder, weight_name: str = "pytorch_lora_weights.safetensors", rank: int = 4, seed: int = 0):
    """Add a random (non-zero) LoRA adapter to ``unet``'s attention layers and save it the way
    ``load_lora_weights(folder, weight_name=...)`` reads it; return the file's path."""
    from pathlib import Path

    from diffusers import StableDiffusionInstructPix2PixPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionInstructPix2PixPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(unet), weight_name=weight_name
    )
    return Path(folder) / weight_name


def tiny_sd3_instruct_pix2pix_components(seed: int = 0, with_mask: bool = False, latent_channels: int = 16,
                                         num_layers: int = 2, shift: float = 3.0, perturb: float = 0.0,
                                         words: Iterable[str] | None = None) -> dict:
    """Components of a ``StableDiffusion3InstructPix2PixPipeline``: those of :func:`tiny_sd3_pipeline`
    (no T5) with the transformer's patch embedding widened to 2x (image) or, ``with_mask``, 3x (image and
    mask) the latent channels, new weights zero (the untrained model reproduces the text-to-image one).
    ``perturb`` > 0 adds seeded noise of that scale to the new patch-embedding weights, standing in for a
    trained model whose image and mask change the output."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from editforge.pipelines import widen_patch_embedding

    components = tiny_sd3_components(seed, in_channels=latent_channels, latent_channels=latent_channels,
                                     num_layers=num_layers, words=words)
    components["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=shift)
    transformer = widen_patch_embedding(components["transformer"], (3 if with_mask else 2) * latent_channels)
    if perturb:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            weight = transformer.pos_embed.proj.weight
            weight[:, latent_channels:] += perturb * torch.randn(weight[:, latent_channels:].shape, generator=generator)
    return components


def tiny_sd3_instruct_pix2pix_pipeline(seed: int = 0, with_mask: bool = False, perturb: float = 0.0,
                                       image_latents_normalization: str = "unscaled", **kwargs):
    """A ``StableDiffusion3InstructPix2PixPipeline`` of :func:`tiny_sd3_instruct_pix2pix_components`."""
    from editforge.pipelines import StableDiffusion3InstructPix2PixPipeline

    components = tiny_sd3_instruct_pix2pix_components(seed, with_mask=with_mask, perturb=perturb, **kwargs)
    pipe = StableDiffusion3InstructPix2PixPipeline(**components, image_latents_normalization=image_latents_normalization)
    pipe.set_progress_bar_config(disable=True)
    return pipe
