"""training/lora.py: one LoRA API for a UNet and an SD3 transformer, saved in diffusers' format.

For each denoiser: add_lora, train the adapter a few steps, save_lora; then a fresh diffusers
pipeline's ``load_lora_weights`` reproduces the in-memory model's images exactly, and load_lora
restores the exact weights for resuming."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from editforge.testing.tiny_models import tiny_instruct_pix2pix_pipeline, tiny_sd3_pipeline
from editforge.training import objectives as obj
from editforge.training.lora import (
    LORA_WEIGHT_NAME,
    add_lora,
    default_lora_targets,
    load_lora,
    lora_family,
    lora_state_dict,
    save_lora,
)

UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
SD3_TARGETS = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
               "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _source_image():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _images(pipe):
    """Two steps at 32x32 with a fixed generator, as a float array."""
    common = dict(num_inference_steps=2, output_type="np", generator=_generator(0))
    if hasattr(pipe, "unet"):
        return pipe("make it red", image=_source_image(), **common).images
    return pipe("a red circle", height=32, width=32, **common).images


# ------------------------------------------------------------------ training the adapter


def _unet_step(unet, generator):
    """One DDPM epsilon step of the tiny InstructPix2Pix UNet (8 input channels, 16x16 latents)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    image_latents = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 4, 32, generator=generator)
    noise = obj.noise_like(latents, generator)
    timesteps = obj.sample_timesteps(scheduler, 2, generator, "cpu")
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(torch.cat([noisy, image_latents], 1), timesteps, text).sample
    return obj.diffusion_loss(prediction, obj.target_for(scheduler, latents, noise, timesteps, "epsilon"))


def _sd3_step(transformer, generator):
    """One flow-matching step of the tiny SD3 transformer (16 latent channels, 8x8 latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    latents = torch.randn(2, 16, 8, 8, generator=generator)
    text = torch.randn(2, 6, 32, generator=generator)
    pooled = torch.randn(2, 64, generator=generator)
    batch = obj.flow_matching_batch(FlowMatchEulerDiscreteScheduler(shift=3.0), latents, generator, "logit_normal")
    prediction = transformer(hidden_states=batch.noisy, timestep=batch.timesteps, encoder_hidden_states=text,
                             pooled_projections=pooled).sample
    return obj.weighted_mse(prediction, batch.target, batch.weighting).mean()


def _train(denoiser, steps=3, lr=5e-2, seed=0):
    """A few AdamW steps on the adapter alone; the losses (they must move)."""
    step = _unet_step if hasattr(denoiser.config, "cross_attention_dim") else _sd3_step
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=lr)
    losses = []
    denoiser.train()
    for i in range(steps):
        loss = step(denoiser, _generator(seed + i))
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    denoiser.eval()
    return losses


def _randomise_lora(denoiser, seed, scale=0.05):
    """Seeded random adapter weights (a stand-in for another training run)."""
    generator = _generator(seed)
    with torch.no_grad():
        for name, parameter in denoiser.named_parameters():
            if "lora_" in name:
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))


FAMILIES = {
    "unet": (lambda: tiny_instruct_pix2pix_pipeline(0), "unet", UNET_TARGETS),
    "sd3": (lambda: tiny_sd3_pipeline(0), "transformer", SD3_TARGETS),
}


# -------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_lora_loads_into_a_fresh_diffusers_pipeline_and_reproduces_the_images(family, tmp_path):
    build, component, targets = FAMILIES[family]
    pipe = build()
    denoiser = getattr(pipe, component)
    base_images = _images(pipe)
    assert default_lora_targets(denoiser) == targets

    add_lora(denoiser, rank=4, alpha=8)  # scale 2: the metadata must carry alpha
    trainable = {n for n, p in denoiser.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted_modules = {n.split(".lora_")[0] for n in trainable}
    assert {next(t for t in targets if m.endswith(t)) for m in adapted_modules} == set(targets)
    assert np.array_equal(_images(pipe), base_images)  # lora_B starts at zero

    losses = _train(denoiser)
    assert len(set(losses)) == 3
    # every up-projection moved, but the last SD3 block's context query (context-pre-only: its
    # context output is dropped, so no gradient reaches it; diffusers' script targets it all the same)
    dead = f"transformer_blocks.{len(getattr(denoiser, 'transformer_blocks', [])) - 1}.attn.add_q_proj."
    ups = {k: v for k, v in lora_state_dict(denoiser).items() if "lora_B" in k or "lora.up" in k}
    assert all(v.abs().max() > 0 for k, v in ups.items() if not k.startswith(dead)), ups.keys()
    trained_images = _images(pipe)
    assert np.abs(trained_images - base_images).max() > 1e-3  # the adapter changes the images

    path = save_lora(denoiser, tmp_path / "lora")
    assert path == tmp_path / "lora" / LORA_WEIGHT_NAME and path.is_file()
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert keys and all("lora" in k and k.startswith(f"{component}.") for k in keys)
    assert len(keys) == len(trainable)
    config = json.loads(metadata["lora_adapter_metadata"])
    assert config[f"{component}.r"] == 4 and config[f"{component}.lora_alpha"] == 8

    fresh = build()
    assert np.array_equal(_images(fresh), base_images)
    fresh.load_lora_weights(str(tmp_path / "lora"), weight_name=LORA_WEIGHT_NAME)
    reloaded = _images(fresh)
    assert np.abs(reloaded - trained_images).max() <= 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_load_lora_restores_the_exact_adapter_for_resuming(family, tmp_path):
    build, component, _ = FAMILIES[family]
    trained = getattr(build(), component)
    add_lora(trained, rank=4, alpha=4)
    _randomise_lora(trained, seed=1)
    save_lora(trained, tmp_path)
    saved = lora_state_dict(trained)

    resumed_pipe = build()
    resumed = getattr(resumed_pipe, component)
    add_lora(resumed, rank=4, alpha=4)
    _randomise_lora(resumed, seed=2)  # something else, to be overwritten
    load_lora(resumed, tmp_path)
    restored = lora_state_dict(resumed)
    assert restored.keys() == saved.keys()
    assert all(torch.equal(restored[k], saved[k]) for k in saved)
    assert all(p.requires_grad for n, p in resumed.named_parameters() if "lora_" in n)  # still trainable

    reference_pipe = build()
    reference_pipe.register_modules(**{component: trained})
    assert np.array_equal(_images(resumed_pipe), _images(reference_pipe))


@pytest.mark.parametrize("family", FAMILIES)
def test_load_lora_refuses_an_adapter_that_does_not_match(family, tmp_path):
    build, component, targets = FAMILIES[family]
    saved = getattr(build(), component)
    add_lora(saved, rank=4)
    save_lora(saved, tmp_path)

    bare = getattr(build(), component)
    with pytest.raises(ValueError, match="carries no LoRA adapter: call add_lora first"):
        load_lora(bare, tmp_path)
    with pytest.raises(ValueError, match="carries no LoRA adapter"):
        lora_state_dict(bare)

    fewer = getattr(build(), component)
    add_lora(fewer, rank=4, targets=targets[:2])
    with pytest.raises(ValueError, match="does not match .* weights missing"):
        load_lora(fewer, tmp_path)

    other_rank = getattr(build(), component)
    add_lora(other_rank, rank=2)
    with pytest.raises(ValueError, match="does not fit"):
        load_lora(other_rank, tmp_path)


def test_unsupported_denoisers_and_mismatched_pipelines_are_refused(tmp_path):
    from diffusers import (
        StableDiffusion3Pipeline,
        StableDiffusionXLInstructPix2PixPipeline,
    )

    for thing in (torch.nn.Linear(4, 4), object()):
        with pytest.raises(TypeError, match="LoRA is not supported for a .*; supported denoisers: "
                                            "UNet2DConditionModel, SD3Transformer2DModel"):
            add_lora(thing, rank=4)
    with pytest.raises(TypeError, match="LoRA is not supported for a Linear"):
        save_lora(torch.nn.Linear(4, 4), tmp_path)

    unet = tiny_instruct_pix2pix_pipeline(0).unet
    assert lora_family(unet).pipeline_class == "StableDiffusionInstructPix2PixPipeline"
    add_lora(unet, rank=4)
    with pytest.raises(TypeError, match="StableDiffusion3Pipeline's LoRA loader has no 'unet_lora_layers'"):
        save_lora(unet, tmp_path, pipeline_class=StableDiffusion3Pipeline)
    # another UNet pipeline's saver (SDXL's) writes the same unet.* keys
    path = save_lora(unet, tmp_path / "xl", pipeline_class=StableDiffusionXLInstructPix2PixPipeline)
    load_lora(unet, path.parent, pipeline_class=StableDiffusionXLInstructPix2PixPipeline)


def test_tiny_sd3_pipeline_is_shaped_like_sd3():
    pipe = tiny_sd3_pipeline(0)
    assert pipe.vae.config.latent_channels == 16 == pipe.transformer.config.in_channels
    assert pipe.scheduler.config.shift == 3.0 and pipe.text_encoder_3 is None
    assert len(pipe.transformer.transformer_blocks) == 2
    assert pipe.transformer.transformer_blocks[0].attn.to_add_out is not None  # the context output projection
    image = _images(pipe)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    assert np.array_equal(image, _images(tiny_sd3_pipeline(0)))  # seeded: the same weights every time
