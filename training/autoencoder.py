"""Train a small ``AutoencoderKL`` on a set of images (the demo's tiny VAE).

Latent diffusion needs a VAE; a tiny random one reconstructs nothing, so the demo first fits one
to its images. The objective is reconstruction through the posterior mean (a deterministic
autoencoder) plus a very small KL term, on random crops (the model is convolutional, so crops
train it as well as whole images, for less compute).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tiny_autoencoder(block_out_channels=(32, 64), latent_channels: int = 4, seed: int = 0):
    """An ``AutoencoderKL`` without mid-block attention, downsampling 2x per extra block."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=tuple(block_out_channels),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        mid_block_add_attention=False,
    )


def train_autoencoder(vae, images: torch.Tensor, steps: int, batch_size: int = 64, learning_rate: float = 1e-3,
                      crop: int | None = 16, kl_weight: float = 1e-6, seed: int = 0, progress: bool = True) -> list[float]:
    """Fit ``vae`` to ``images`` ([N, 3, H, W] in [-1, 1]); return the loss of every step.

    Afterwards ``vae.config.scaling_factor`` is set so that latents of these images have unit
    standard deviation, as diffusion training expects.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    vae.train()
    losses = []
    height, width = images.shape[-2:]
    for _ in tqdm(range(steps), desc="train VAE", unit="step", disable=not progress):
        batch = images[torch.randint(0, len(images), (batch_size,), generator=generator)]
        if crop is not None and crop < min(height, width):
            top = int(torch.randint(0, height - crop + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop + 1, (1,), generator=generator))
            batch = batch[..., top: top + crop, left: left + crop]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.mode()).sample
        loss = F.mse_loss(reconstruction, batch) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    vae.eval()
    with torch.no_grad():
        sample = images[:256]
        latents = vae.encode(sample).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return losses
