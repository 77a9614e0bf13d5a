"""The diffusion training objective shared by the scripts: noising, targets, min-SNR weights."""

from __future__ import annotations

import torch


def sample_timesteps(scheduler, batch: int, generator: torch.Generator, device) -> torch.Tensor:
    steps = scheduler.config.num_train_timesteps
    return torch.randint(0, steps, (batch,), generator=generator).to(device)


def noise_like(latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)


def target_for(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prediction_type: str):
    """What the model learns to predict: the noise, or the velocity (v-prediction)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def diffusion_loss(prediction, target, scheduler=None, timesteps=None, snr_gamma: float | None = None,
                   prediction_type: str = "epsilon") -> torch.Tensor:
    """Mean squared error, optionally with min-SNR weighting (Hang et al., 2023)."""
    per_example = ((prediction.float() - target.float()) ** 2).mean(dim=tuple(range(1, prediction.ndim)))
    if snr_gamma is not None:
        ratio = snr(scheduler, timesteps)
        clipped = torch.clamp(ratio, max=snr_gamma)
        weight = clipped / (ratio + 1.0) if prediction_type == "v_prediction" else clipped / ratio
        per_example = per_example * weight
    return per_example.mean()
