"""Validation grids during training: each row an input image beside what the model made of it
(an edit of it, or an image for its prompt)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def write_validation_grid(trainer, step: int, rows: Sequence, render: Callable[[int, object], tuple]) -> Path:
    """``render(i, row) -> (input PIL image, ..., output PIL image)`` for every row (the inputs, such as
    a source and its mask, then the output; each tile at the first one's size); the rows go into
    ``<output_dir>/validation/step-<step>.png`` and to the trackers (images to TensorBoard / W&B,
    the file's path to the JSONL log)."""
    from PIL import Image

    folder = trainer.output_dir / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    tiles = []
    for i, row in enumerate(rows):
        first, *rest = render(i, row)
        tiles.append(np.concatenate([np.asarray(first)] + [np.asarray(t.convert("RGB").resize(first.size)) for t in rest],
                                    axis=1))
    grid = Image.fromarray(np.concatenate(tiles, axis=0))
    path = folder / f"step-{step:06d}.png"
    grid.save(path)
    for tracker in trainer.accelerator.trackers:
        if tracker.name in ("tensorboard", "wandb"):
            tracker.log_images({"validation": [np.asarray(grid)]}, step=step)
        else:
            tracker.log({"validation_grid": str(path)}, step=step)
    return path


def validation_rows(config, dataset, load_split: Callable[[str], object]) -> list:
    """The first ``num_validation_images`` rows of ``--validation_split`` (loaded with
    ``load_split(name)``), or of the training data."""
    if config.num_validation_images <= 0:
        return []
    if config.validation_split:
        dataset = load_split(config.validation_split)
    return [dataset[i] for i in range(min(config.num_validation_images, len(dataset)))]


def edit_renderer(config, pipe, with_mask: bool = False, **call_kwargs) -> Callable[[int, object], tuple]:
    """``render`` for an editing pipeline: each row's source image (fitted to the resolution), with
    ``with_mask`` its region mask (fitted the same way; white, edit everywhere, for a free-form row,
    which the pipeline gets as ``mask_image=None``), and the pipeline's edit of it by the row's
    instruction, seeded by (seed + row number)."""
    import torch
    from PIL import Image

    from .data import fit

    def render(i, row):
        (source,) = fit([row["source_image"].convert("RGB")], config.resolution, config.resolution)
        extra, tiles = dict(call_kwargs), [source]
        if with_mask:
            mask = row.get("mask_image")
            if mask is not None:
                (mask,) = fit([mask.convert("L").convert("RGB")], config.resolution, config.resolution)
            extra["mask_image"] = mask
            tiles.append(mask if mask is not None else Image.new("RGB", source.size, "white"))
        edited = pipe(row["instruction"], image=source, num_inference_steps=config.validation_inference_steps,
                      guidance_scale=config.validation_guidance_scale,
                      image_guidance_scale=config.validation_image_guidance_scale,
                      generator=torch.Generator().manual_seed(config.seed + i), **extra).images[0]
        return (*tiles, edited)

    return render


def prompt_renderer(config, pipe, prompt: str, reference: Callable[[object], object]) -> Callable[[int, object], tuple]:
    """``render`` for a text-to-image pipeline: each row's ``reference(row)`` image (the data's image for
    the prompt, fitted to the resolution) beside the pipeline's image for the row's ``prompt`` column,
    seeded by (seed + row number)."""
    import torch

    from .data import fit

    def render(i, row):
        (image,) = fit([reference(row).convert("RGB")], config.resolution, config.resolution)
        return image, pipe(row[prompt], height=config.resolution, width=config.resolution,
                           num_inference_steps=config.validation_inference_steps,
                           guidance_scale=config.validation_guidance_scale,
                           generator=torch.Generator().manual_seed(config.seed + i)).images[0]

    return render
