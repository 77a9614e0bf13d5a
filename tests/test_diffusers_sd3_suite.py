"""diffusers' own SD3 pipeline tests, run against StableDiffusion3InstructPix2PixPipeline.

The tests are diffusers': ``StableDiffusion3PipelineFastTests`` of
``tests/pipelines/stable_diffusion_3/test_pipeline_stable_diffusion_3.py`` with the ``PipelineTesterMixin``
of ``tests/pipelines/test_pipelines_common.py`` it is built on, imported by path from a diffusers source
checkout (nothing of it is copied here). The installed diffusers is the one under test.

    EDITFORGE_DIFFUSERS_CHECKOUT=/path/to/diffusers pytest tests/test_diffusers_sd3_suite.py

Without the variable the module is skipped. ``benchmarks/diffusers_sd3_pipeline_tests.py`` runs it and
writes the per-test result as JSON.

Adaptations, each for a stated reason (``INAPPLICABLE`` holds the tests that cannot apply):

* the dummy transformer's patch embedding is widened with ``widen_patch_embedding`` (new weights zero)
  from 4 to 8 input channels (noisy + image latents for the 4-channel dummy VAE) or, in the mask class,
  to 12 (noisy + image + mask); the call gets an ``image`` (a seeded 32x32 tensor in 0..1, as diffusers'
  SD3 img2img tests make it) and ``image`` joins the batch parameters;
* the text encoders: diffusers downloads ``hf-internal-testing/tiny-random-clip`` (tokenizers) and
  ``hf-internal-testing/tiny-random-t5``; tests run offline, so a local CLIP tokenizer is used and the
  T5 encoder is left out (``text_encoder_3=None``, which SD3 allows). The expected pixel slice of
  ``test_inference`` was computed with those downloads: it is inapplicable, and
  ``test_inference_equals_stock`` (editforge's) checks instead that the untrained widened model gives
  stock ``StableDiffusion3Pipeline``'s images on the same components;
* ``test_encode_prompt_works_in_isolation``: it builds a pipeline of the text components alone; without
  T5, stock SD3's ``encode_prompt`` (inherited) needs the transformer's config: inapplicable here;
* ``test_skip_guidance_layers``: skip-layer guidance (an SD3.5 option of the text-to-image call) is not
  part of this pipeline's call: inapplicable.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import pytest
import torch

from diffusers_checkout import import_diffusers_tests

_SD3_MODULE = "tests.pipelines.stable_diffusion_3.test_pipeline_stable_diffusion_3"
sd3_tests = import_diffusers_tests(_SD3_MODULE, "benchmarks/diffusers_sd3_pipeline_tests.py")
if not hasattr(sd3_tests, "StableDiffusion3PipelineFastTests"):
    pytest.skip(f"{sd3_tests.__file__} has no StableDiffusion3PipelineFastTests", allow_module_level=True)

from diffusers import StableDiffusion3Pipeline

from editforge.pipelines import StableDiffusion3InstructPix2PixPipeline, widen_patch_embedding
from editforge.testing.tiny_models import build_clip_tokenizer

HUB_TOKENIZER = "hf-internal-testing/tiny-random-clip"
_WORDS = ["a painting of a squirrel eating a burger", "french fries", "very long"]
_TOKENIZER = build_clip_tokenizer(_WORDS)

INAPPLICABLE: dict[str, str] = {
    "test_inference": (
        "expected pixel slice computed with the downloaded hf-internal-testing tokenizer and T5 encoder, which"
        " tests here cannot fetch (offline); test_inference_equals_stock checks the same call against stock"
        " StableDiffusion3Pipeline on the same components instead"
    ),
    "test_encode_prompt_works_in_isolation": (
        "needs the T5 encoder of the downloaded dummy components: it builds a pipeline of the text components"
        " alone, and without T5 stock SD3's encode_prompt (inherited) reads transformer.config.joint_attention_dim"
        " for the zero T5 embeddings, so it fails the same way for stock StableDiffusion3Pipeline;"
        " tests/test_sd3_pix2pix_pipeline.py passes prompt embeddings through the call instead"
    ),
    "test_skip_guidance_layers": (
        "skip-layer guidance (an SD3.5 option of the text-to-image call) is not part of this pipeline's call"
    ),
}


@contextlib.contextmanager
def _replaced(module, **values):
    originals = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(module, name, value)


class _Offline:
    """Stands in for the Hub-downloading classes of diffusers' test module while get_dummy_components runs."""

    class CLIPTokenizer:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            assert name == HUB_TOKENIZER, name
            return _TOKENIZER

    class NoT5:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            return None

    @staticmethod
    def T5EncoderModel(config):  # noqa: N802 (a class name in diffusers' module)
        return None


class _SD3Pix2PixTests(sd3_tests.StableDiffusion3PipelineFastTests):
    """diffusers' SD3 fast tests with our class and an image input; ``condition_factor`` 2 (image) or 3
    (image + mask) times the latent channels."""

    __test__ = False
    pipeline_class = StableDiffusion3InstructPix2PixPipeline
    batch_params = frozenset(["prompt", "negative_prompt", "image"])
    params = sd3_tests.StableDiffusion3PipelineFastTests.params | frozenset(["image", "image_guidance_scale"])
    condition_factor = 2

    def setUp(self):
        reason = INAPPLICABLE.get(self._testMethodName)
        if reason:
            self.skipTest(f"inapplicable: {reason}")
        super().setUp()

    def _stock_components(self):
        with _replaced(sd3_tests, CLIPTokenizer=_Offline.CLIPTokenizer, AutoConfig=_Offline.NoT5,
                       AutoTokenizer=_Offline.NoT5, T5EncoderModel=_Offline.T5EncoderModel):
            return super().get_dummy_components()

    def get_dummy_components(self):
        components = self._stock_components()
        latent = components["vae"].config.latent_channels
        widen_patch_embedding(components["transformer"], self.condition_factor * latent)
        return components

    def get_dummy_inputs(self, device, seed=0):
        inputs = super().get_dummy_inputs(device, seed)
        inputs["image"] = sd3_tests.__dict__.get("floats_tensor", _floats_tensor)((1, 3, 32, 32), rng=random.Random(seed)).to(device)
        return inputs

    def test_inference_equals_stock(self):
        """editforge: the untrained widened model is the text-to-image model (SD3's latent convention)."""
        components = self.get_dummy_components()
        stock_components = self._stock_components()
        pipe = self.pipeline_class(**components, image_latents_normalization="scaled_shifted")
        stock = StableDiffusion3Pipeline(**stock_components)
        for p in (pipe, stock):
            p.set_progress_bar_config(disable=True)
        for image_guidance_scale in (1.0, 1.5, 3.0):
            inputs = self.get_dummy_inputs("cpu")
            ours = pipe(**inputs, image_guidance_scale=image_guidance_scale).images
            inputs = self.get_dummy_inputs("cpu")
            inputs.pop("image")
            theirs = stock(**inputs, height=32, width=32).images
            assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-5


def _floats_tensor(shape, scale=1.0, rng=None):
    rng = rng or random.Random()
    total = int(np.prod(shape))
    return torch.tensor([rng.random() * scale for _ in range(total)], dtype=torch.float).view(shape)


class TestSD3Pix2PixWithDiffusersSD3Tests(_SD3Pix2PixTests):
    """Every test of diffusers' ``StableDiffusion3PipelineFastTests`` (its own and ``PipelineTesterMixin``'s)
    on an image-conditioned transformer (2x latent channels, no mask)."""

    __test__ = True


class TestSD3Pix2PixMaskWithDiffusersSD3Tests(_SD3Pix2PixTests):
    """The same on a mask-conditioned transformer (3x latent channels); the call leaves ``mask_image`` out
    (free-form: an all-white mask)."""

    __test__ = True
    condition_factor = 3
