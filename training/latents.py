"""Training examples with their images encoded once by the frozen VAE (``--cache_latents``)."""

from __future__ import annotations

import torch


class CachedLatents(torch.utils.data.Dataset):
    """``examples`` (a map-style dataset of dicts) with each image tensor under ``keys`` (``[3, H, W]``,
    or several stacked, ``[..., 3, H, W]``) replaced by its VAE latent (``latent_dist.mode()``,
    unscaled) under ``<key>_latents``; other fields stay.

    With ``distribution`` (``--cache_latent_distribution``) the latent distribution's parameters are
    kept instead (``latent_dist.parameters``: mean and log-variance, ``[2C, h, w]``), so that training
    draws a latent every step as encoding every step does (``cached_latents``): the same training,
    twice the memory."""

    def __init__(self, examples, vae, keys=("source", "edited"), batch_size: int = 32, progress: bool = True,
                 distribution: bool = False):
        from tqdm.auto import tqdm

        self.rows, pending = [], []

        @torch.no_grad()
        def encode(pixels):  # [..., 3, H, W] (a pair's images: [B, 2, 3, H, W]) -> [..., C, h, w]
            flat = pixels.reshape(-1, *pixels.shape[-3:]).to(vae.device, vae.dtype)
            posterior = vae.encode(flat).latent_dist
            latents = (posterior.parameters if distribution else posterior.mode()).float().cpu()
            return latents.reshape(*pixels.shape[:-3], *latents.shape[1:])

        def flush():
            latents = {key: encode(torch.stack([e[key] for e in pending])) for key in keys}
            for i, example in enumerate(pending):
                row = {k: v for k, v in example.items() if k not in keys}
                self.rows.append({**row, **{f"{key}_latents": latents[key][i] for key in keys}})
            pending.clear()

        for index in tqdm(range(len(examples)), desc="encode latents", unit="example", disable=not progress):
            pending.append(examples[index])
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def cached_latents(cached: torch.Tensor, generator: torch.Generator | None = None, *, distribution: bool,
                   sample: bool = True) -> torch.Tensor:
    """Unscaled latents ``[B, C, h, w]`` from a batch of what ``CachedLatents`` stored: the mode as it is;
    from the distribution's parameters a draw with ``generator`` (``sample``, as ``latent_dist.sample``
    draws it: the same noise for the same generator state) or its mode."""
    if not distribution:
        return cached
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    posterior = DiagonalGaussianDistribution(cached)
    return posterior.sample(generator) if sample else posterior.mode()
