"""Tiny random image/text encoders for the quality metrics, built offline.

:func:`save_tiny_clip` writes a ``CLIPModel`` (vision and text towers, projections) with its
``CLIPProcessor`` (image processor + an in-memory-vocabulary tokenizer) to a folder;
:func:`save_tiny_dinov2` writes a DINOv2 with registers (``Dinov2WithRegistersModel``, or
``Dinov2Model`` where transformers has no register variant) with its image processor. Both load
back with ``from_pretrained(folder)`` exactly like ``openai/clip-vit-large-patch14`` and
``facebook/dinov2-with-registers-large``, so tests, benchmarks and the demo run the real loading
code on them. Weights are seeded random: the numbers they give mean nothing about images.
"""

from __future__ import annotations

import os
from pathlib import Path

# CLIP's and ImageNet's normalisation constants, as the real checkpoints' processors use them.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def tiny_clip(image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 2,
              projection_dim: int = 16, words=(), seed: int = 0):
    """``(CLIPModel, CLIPProcessor)`` with random weights (seeded) and a tokenizer knowing ``words``."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from .tiny_models import build_clip_tokenizer, synthetic_world_words

    tokenizer = build_clip_tokenizer(list(words) or synthetic_world_words())
    text = dict(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=len(tokenizer.get_vocab()), hidden_size=hidden_size,
        intermediate_size=2 * hidden_size, num_attention_heads=4, num_hidden_layers=num_layers, max_position_embeddings=77,
    )
    vision = dict(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_attention_heads=4, num_hidden_layers=num_layers,
        image_size=image_size, patch_size=patch_size, num_channels=3,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_dinov2(image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 2,
                num_register_tokens: int = 4, seed: int = 0):
    """``(model, image processor)``: a DINOv2 with registers when transformers has it, else plain DINOv2."""
    import torch
    import transformers
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    common = dict(
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=4, mlp_ratio=2,
        image_size=image_size, patch_size=patch_size,
    )
    torch.manual_seed(seed)
    if hasattr(transformers, "Dinov2WithRegistersModel"):
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=num_register_tokens, **common)
        model = transformers.Dinov2WithRegistersModel(config)
    else:  # pragma: no cover - older transformers
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    processor = BitImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_convert_rgb=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    )
    return model.eval(), processor


def save_tiny_clip(folder: str | os.PathLike, **kwargs) -> Path:
    """Write :func:`tiny_clip`'s model and processor to ``folder``; returns it."""
    folder = Path(folder)
    model, processor = tiny_clip(**kwargs)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_dinov2(folder: str | os.PathLike, **kwargs) -> Path:
    """Write :func:`tiny_dinov2`'s model and image processor to ``folder``; returns it."""
    folder = Path(folder)
    model, processor = tiny_dinov2(**kwargs)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
