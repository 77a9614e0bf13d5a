"""preprocess_many: the image processors' own output, bit for bit, on many images at once."""

import numpy as np
import PIL.Image
import pytest
import torch
from skimage import data as skdata
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from editforge.dataset_builders.metrics import preprocessing
from editforge.dataset_builders.metrics.preprocessing import preprocess_many
from editforge.testing.tiny_encoders import IMAGENET_MEAN, IMAGENET_STD, tiny_clip, tiny_dinov2


def photographs():
    """scikit-image's photographs (several sizes and aspect ratios) and two small random images."""
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(skdata.astronaut()), PIL.Image.fromarray(skdata.coffee()),
              PIL.Image.fromarray(skdata.chelsea()), PIL.Image.fromarray(skdata.astronaut()[::-1].copy())]
    images += [PIL.Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)) for _ in range(2)]
    return images


def processors():
    """The tiny test encoders' processors and the full-size settings of the checkpoints UltraEdit used."""
    return {
        "tiny clip": tiny_clip()[1].image_processor,
        "tiny dinov2": tiny_dinov2()[1],
        "clip-vit-large-patch14": CLIPImageProcessorPil(),  # shortest edge 224, crop 224, bicubic, CLIP mean/std
        "dinov2-large": BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                             do_center_crop=True, resample=3, image_mean=IMAGENET_MEAN,
                                             image_std=IMAGENET_STD),
        "dinov2 unnormalised": BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                    do_center_crop=True, do_normalize=False),
    }


@pytest.mark.parametrize("name", list(processors()))
def test_equals_the_processor_bit_for_bit(name):
    processor = processors()[name]
    images = photographs()
    fast = preprocess_many(processor, images)
    for image, tensor in zip(images, fast):
        reference = processor(images=[image], return_tensors="pt")["pixel_values"][0]
        assert tensor.dtype == reference.dtype and torch.equal(tensor, reference)


def test_takes_the_fast_path_when_it_reproduces_the_processor(monkeypatch):
    calls = []
    real = preprocessing._processor_output
    monkeypatch.setattr(preprocessing, "_processor_output", lambda p, images: calls.append(len(images)) or real(p, images))
    images = [PIL.Image.fromarray(np.full((40, 40, 3), v, dtype=np.uint8)) for v in range(10)]
    preprocess_many(tiny_clip()[1].image_processor, images)
    assert calls == [1]  # only the check of the first image of the one size went through the processor


def test_falls_back_to_the_processor_when_it_cannot_reproduce_it(monkeypatch):
    # a crop larger than the resized image: the processor pads, which the fast path does not do
    processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 24, "width": 24})
    images = [PIL.Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 30, 3), dtype=np.uint8)) for i in range(3)]
    calls = []
    real = preprocessing._processor_output
    monkeypatch.setattr(preprocessing, "_processor_output", lambda p, imgs: calls.append(len(imgs)) or real(p, imgs))
    out = preprocess_many(processor, images)
    assert calls[-1] == 3  # the whole call went through the processor
    for image, tensor in zip(images, out):
        assert torch.equal(tensor, processor(images=[image], return_tensors="pt")["pixel_values"][0])

    # a subclass with its own _preprocess is never reproduced: the processor runs, its result comes back
    class Shifted(CLIPImageProcessorPil):
        def _preprocess(self, images, **kwargs):
            out = super()._preprocess(images, **kwargs)
            out["pixel_values"] = out["pixel_values"] + 1
            return out

    shifted = Shifted(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    got = preprocess_many(shifted, images)
    assert torch.equal(got[0], shifted(images=[images[0]], return_tensors="pt")["pixel_values"][0])


def test_a_grey_image_goes_through_the_processor():
    grey = PIL.Image.fromarray(np.arange(48 * 48, dtype=np.uint8).reshape(48, 48) % 251)
    processor = tiny_clip()[1].image_processor
    (tensor,) = preprocess_many(processor, [grey])
    assert torch.equal(tensor, processor(images=[grey], return_tensors="pt")["pixel_values"][0])
