"""Image processors of transformers run on many images at once, with the processor's exact output.

transformers' image processors without torchvision (its PIL backend: ``CLIPImageProcessorPil``,
``BitImageProcessorPil`` for DINOv2, ...) prepare one image at a time through a dozen NumPy
steps, each re-inferring the channel layout: for the small images of a metrics run that costs more
than the models. :func:`preprocess_many` does the same work with fewer steps: each image is resized
by Pillow exactly as the processor resizes it (same filter, no reducing gap) and centre-cropped by
slicing, then the whole batch is rescaled and normalised by NumPy in one operation each, in the
processor's own dtypes (float64 rescale cast to float32, then ``(x - mean) / std`` in float32),
so every value is the processor's to the last bit.

It checks that claim on every call: the first image of each size also goes through the processor
itself, and any difference (a processor with settings or steps this does not reproduce: padding,
a crop larger than the image, another backend, a subclass with its own ``_preprocess``) sends the
whole call through the processor instead. The result is therefore always the processor's.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch


def _processor_output(image_processor, images: list) -> list[torch.Tensor]:
    """The processor itself on ``images`` (one call when they can share a batch)."""
    if len({image.size for image in images}) > 1 and not getattr(image_processor, "do_center_crop", False):
        return [image_processor(images=[image], return_tensors="pt")["pixel_values"][0] for image in images]
    return list(image_processor(images=list(images), return_tensors="pt")["pixel_values"])


def _reproducible(image_processor) -> bool:
    """Whether the processor is the PIL backend's plain resize / crop / rescale / normalise pipeline."""
    try:
        from transformers.image_processing_backends import PilBackend
    except ImportError:  # pragma: no cover - another transformers layout
        return False
    if not isinstance(image_processor, PilBackend) or type(image_processor)._preprocess is not PilBackend._preprocess:
        return False
    if getattr(image_processor, "do_pad", None):
        return False
    resample = getattr(image_processor, "resample", None)
    return resample is None or isinstance(resample, int)


def _target_size(image_processor, width: int, height: int) -> tuple[int, int]:
    """(height, width) the processor resizes a ``width`` x ``height`` image to (its own size rule)."""
    probe = np.zeros((3, height, width), dtype=np.uint8)
    resized = image_processor.resize(image=probe, size=image_processor.size, resample=image_processor.resample)
    return resized.shape[-2], resized.shape[-1]


def _fast(image_processor, images: list, target: tuple[int, int] | None) -> torch.Tensor | None:
    """Same-size RGB PIL images -> ``[N, 3, h, w]`` as the processor makes them, or None if a crop
    does not fit (the processor pads then)."""
    p = image_processor
    arrays = []
    for image in images:
        if p.do_resize:
            image = image.resize((target[1], target[0]), resample=PIL.Image.BILINEAR if p.resample is None else p.resample,
                                 reducing_gap=None)
        array = np.asarray(image)
        if p.do_center_crop:
            height, width = array.shape[:2]
            crop_h, crop_w = int(p.crop_size.height), int(p.crop_size.width)
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            if top < 0 or left < 0:
                return None
            array = array[top:top + crop_h, left:left + crop_w]
        arrays.append(array)
    batch = np.stack(arrays)  # [N, h, w, 3]
    if p.do_rescale:
        batch = (batch.astype(np.float64) * p.rescale_factor).astype(np.float32)
    if p.do_normalize:
        if not np.issubdtype(batch.dtype, np.floating):
            batch = batch.astype(np.float32)
        batch = (batch - np.asarray(p.image_mean, dtype=batch.dtype)) / np.asarray(p.image_std, dtype=batch.dtype)
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def preprocess_many(image_processor, images: list) -> list[torch.Tensor]:
    """Run a transformers image processor on RGB PIL images; ``[3, h, w]`` each, equal to the
    processor's own output (the sizes may differ when the processor does not crop to one size)."""
    images = list(images)
    if not images or not _reproducible(image_processor) or any(image.mode != "RGB" for image in images):
        return _processor_output(image_processor, images)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.size, []).append(i)
    out: list[torch.Tensor | None] = [None] * len(images)
    for (width, height), members in groups.items():
        target = _target_size(image_processor, width, height) if image_processor.do_resize else None
        batch = _fast(image_processor, [images[i] for i in members], target)
        reference = _processor_output(image_processor, [images[members[0]]])[0]
        if batch is None or batch.dtype != reference.dtype or not torch.equal(batch[0], reference):
            return _processor_output(image_processor, images)
        for i, tensor in zip(members, batch):
            out[i] = tensor
    return out


__all__ = ["preprocess_many"]
