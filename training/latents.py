"""Training examples with their images encoded once by the frozen VAE (``--cache_latents``)."""

from __future__ import annotations

import torch


class CachedLatents(torch.utils.data.Dataset):
    """``examples`` (a map-style dataset of dicts) with each image tensor under ``keys`` (``[3, H, W]``,
    or several stacked, ``[..., 3, H, W]``) replaced by its VAE latent (``latent_dist.mode()``,
    unscaled) under ``<key>_latents``; other fields stay."""

    def __init__(self, examples, vae, keys=("source", "edited"), batch_size: int = 32, progress: bool = True):
        from tqdm.auto import tqdm

        self.rows, pending = [], []

        @torch.no_grad()
        def encode(pixels):  # [..., 3, H, W] (a pair's images: [B, 2, 3, H, W]) -> [..., C, h, w]
            flat = pixels.reshape(-1, *pixels.shape[-3:]).to(vae.device, vae.dtype)
            latents = vae.encode(flat).latent_dist.mode().float().cpu()
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
