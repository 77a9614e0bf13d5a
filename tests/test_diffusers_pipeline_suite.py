"""diffusers' own pipeline tests, run against RewardConditionedPix2PixPipeline.

The tests are diffusers': the InstructPix2Pix fast-test classes of
``tests/pipelines/stable_diffusion/test_stable_diffusion_instruction_pix2pix.py`` with the mixins they
are built on, imported by path from a diffusers source checkout (nothing of it is copied here). Two
generations of that file are understood:

* pytest style (diffusers main since #14339): ``StableDiffusionInstructPix2PixPipelineTesterConfig``
  with ``PipelineTesterMixin`` / ``MemoryTesterMixin`` of ``tests/pipelines/testing_utils``;
* unittest style (before it): ``StableDiffusionInstructPix2PixPipelineFastTests`` with
  ``PipelineTesterMixin``, ``PipelineLatentTesterMixin`` and ``PipelineKarrasSchedulerTesterMixin`` of
  ``tests/pipelines/test_pipelines_common.py`` (its ``test_callback_cfg`` turns classifier-free
  guidance off in the middle of a run).

The classes below only put our pipeline class in place of the stock one and add a
``reward_conditioner`` to the dummy components. The installed diffusers is the one under test; the
checkout provides the test code only.

    EDITFORGE_DIFFUSERS_CHECKOUT=/path/to/diffusers pytest tests/test_diffusers_pipeline_suite.py

Without the variable the module is skipped. ``benchmarks/diffusers_pipeline_tests.py`` runs this file
once per checkout and writes the per-test result as JSON.

Adaptations, each for a stated reason (``INAPPLICABLE`` holds the tests that cannot apply):

* the tokenizer: diffusers downloads ``hf-internal-testing/tiny-random-clip``; when it is not in the
  local Hub cache (tests run offline) a local CLIP tokenizer is used and the four tests whose expected
  pixel slices were computed with the downloaded one are skipped as inapplicable. Their scenarios are
  still checked, against stock InstructPix2Pix on the same components, bit for bit
  (``test_*_equals_stock``, editforge's own tests);
* the unittest-style class builds ``StableDiffusionInstructPix2PixPipeline(**components)`` by name in
  some tests instead of ``self.pipeline_class``; while each test runs, that name is our class;
* ``test_encode_prompt_works_in_isolation`` (when the pipeline has ``encode_prompt``; stock
  InstructPix2Pix has not, so diffusers skips it): a pipeline without a text encoder cannot encode
  the reward feedback either, so the precomputed ``reward_feedback_embeds`` join the inputs.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from diffusers_checkout import import_diffusers_tests

ip2p_tests = import_diffusers_tests("tests.pipelines.stable_diffusion.test_stable_diffusion_instruction_pix2pix",
                                    "benchmarks/diffusers_pipeline_tests.py")

import diffusers
from diffusers import StableDiffusionInstructPix2PixPipeline

from editforge.pipelines import RewardConditionedPix2PixPipeline, RewardConditioner
from editforge.testing.tiny_models import build_clip_tokenizer

HUB_TOKENIZER = "hf-internal-testing/tiny-random-clip"
# Every word the diffusers tests and our default feedback write, so that each is one token.
_WORDS = ["a painting of a squirrel eating a burger", "french fries", "very long", "none"]
PYTEST_STYLE = hasattr(ip2p_tests, "StableDiffusionInstructPix2PixPipelineTesterConfig")
UNITTEST_STYLE = hasattr(ip2p_tests, "StableDiffusionInstructPix2PixPipelineFastTests")
if not (PYTEST_STYLE or UNITTEST_STYLE):
    pytest.skip(f"{ip2p_tests.__file__} has neither known InstructPix2Pix test class", allow_module_level=True)

_SLICE_TESTS = (
    "test_stable_diffusion_pix2pix_default_case",
    "test_stable_diffusion_pix2pix_negative_prompt",
    "test_stable_diffusion_pix2pix_multiple_init_images",
    "test_stable_diffusion_pix2pix_euler",
)


def _hub_tokenizer():
    """diffusers' test tokenizer when the local Hub cache has it, else ``None``."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import CLIPTokenizer

    # Asked of the cache first: offline, transformers builds an empty tokenizer instead of failing.
    if not all(isinstance(try_to_load_from_cache(HUB_TOKENIZER, name), str) for name in ("vocab.json", "merges.txt")):
        return None
    return CLIPTokenizer.from_pretrained(HUB_TOKENIZER)


_TOKENIZER = _hub_tokenizer()
USES_HUB_TOKENIZER = _TOKENIZER is not None
if _TOKENIZER is None:
    _TOKENIZER = build_clip_tokenizer(_WORDS)

# Tests of diffusers' classes that cannot apply to this pipeline or this environment, with the reason.
INAPPLICABLE: dict[str, str] = {}
if not USES_HUB_TOKENIZER:
    for _name in _SLICE_TESTS:
        INAPPLICABLE[_name] = (
            f"expected pixel slice computed with the {HUB_TOKENIZER} tokenizer, which is not in the local Hub"
            " cache (tests run offline); the same scenario is checked bit for bit against stock"
            f" InstructPix2Pix in {_name}_equals_stock"
        )


@contextlib.contextmanager
def _replaced(module, name, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


class _LocalTokenizer:
    """Stands in for ``CLIPTokenizer`` in diffusers' test module while ``get_dummy_components`` runs."""

    @staticmethod
    def from_pretrained(name, *args, **kwargs):
        assert name == HUB_TOKENIZER, name
        return _TOKENIZER


def _with_reward_conditioner(components: dict) -> dict:
    components["reward_conditioner"] = RewardConditioner.from_unet(
        components["unet"], feedback_dim=components["text_encoder"].config.hidden_size
    )
    return components


def _feedback_embeds(components: dict) -> torch.Tensor:
    """The pooled embedding of "no failure" feedback [1, D], as the pipeline computes it by default."""
    conditioner = components["reward_conditioner"]
    with torch.no_grad():
        return conditioner.encode_feedback(
            components["tokenizer"], components["text_encoder"], [conditioner.no_failure_feedback]
        )


class _EqualsStock:
    """The scenarios of diffusers' four expected-slice tests, compared with stock InstructPix2Pix on
    the same components instead of with a stored slice (editforge's own tests, not diffusers')."""

    def _dummy_inputs(self) -> dict:
        raise NotImplementedError

    def _ours_and_stock(self, components=None, **extra_inputs):
        components = components or self.get_dummy_components()
        stock_components = {k: v for k, v in components.items() if k != "reward_conditioner"}
        outputs = []
        for pipe in (RewardConditionedPix2PixPipeline(**components), StableDiffusionInstructPix2PixPipeline(**stock_components)):
            pipe.set_progress_bar_config(disable=True)
            inputs = {**self._dummy_inputs(), **extra_inputs}
            outputs.append(np.asarray(pipe(**inputs)[0]))
        return outputs

    def test_stable_diffusion_pix2pix_default_case_equals_stock(self):
        ours, stock = self._ours_and_stock()
        assert len(ours) == 1 and np.array_equal(ours, stock)

    def test_stable_diffusion_pix2pix_negative_prompt_equals_stock(self):
        ours, stock = self._ours_and_stock(negative_prompt="french fries")
        assert len(ours) == 1 and np.array_equal(ours, stock)

    def test_stable_diffusion_pix2pix_multiple_init_images_equals_stock(self):
        inputs = self._dummy_inputs()
        image = torch.from_numpy(np.array(inputs["image"]).astype(np.float32) / 255.0).unsqueeze(0)
        image = (image / 2 + 0.5).permute(0, 3, 1, 2).repeat(2, 1, 1, 1)
        ours, stock = self._ours_and_stock(prompt=[inputs["prompt"]] * 2, image=image)
        assert len(ours) == 2 and np.array_equal(ours, stock)

    def test_stable_diffusion_pix2pix_euler_equals_stock(self):
        components = self.get_dummy_components()
        components["scheduler"] = diffusers.EulerAncestralDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
        )
        ours, stock = self._ours_and_stock(components)
        assert len(ours) == 1 and np.array_equal(ours, stock)


if PYTEST_STYLE:

    class RewardPix2PixTesterConfig(ip2p_tests.StableDiffusionInstructPix2PixPipelineTesterConfig):
        """diffusers' InstructPix2Pix test config with our pipeline class and a reward conditioner."""

        pipeline_class = RewardConditionedPix2PixPipeline

        def get_dummy_components(self):
            with _replaced(ip2p_tests, "CLIPTokenizer", _LocalTokenizer):
                return _with_reward_conditioner(super().get_dummy_components())

        def _dummy_inputs(self):
            return self.get_dummy_inputs()

        @pytest.fixture(autouse=True)
        def skip_inapplicable(self, request):
            reason = INAPPLICABLE.get(request.node.originalname)
            if reason:
                pytest.skip(f"inapplicable: {reason}")

    class TestRewardPix2PixWithDiffusersPipelineTests(
        RewardPix2PixTesterConfig, _EqualsStock, ip2p_tests.TestStableDiffusionInstructPix2PixPipeline
    ):
        """Every test of diffusers' ``TestStableDiffusionInstructPix2PixPipeline`` (its own and
        ``PipelineTesterMixin``'s), with ``pipeline_class`` ours."""

        def test_encode_prompt_works_in_isolation(self, *args, **kwargs):
            embeds = _feedback_embeds(self.get_dummy_components())
            get_dummy_inputs = self.get_dummy_inputs
            self.get_dummy_inputs = lambda: {**get_dummy_inputs(), "reward_feedback_embeds": embeds}
            try:
                super().test_encode_prompt_works_in_isolation(*args, **kwargs)
            finally:
                del self.get_dummy_inputs

    class TestRewardPix2PixWithDiffusersMemoryTests(
        RewardPix2PixTesterConfig, ip2p_tests.TestStableDiffusionInstructPix2PixPipelineMemory
    ):
        """diffusers' memory tests (CPU offload, group offload, layerwise casting) with our pipeline."""


if UNITTEST_STYLE:

    class TestRewardPix2PixWithDiffusersLegacyPipelineTests(
        _EqualsStock, ip2p_tests.StableDiffusionInstructPix2PixPipelineFastTests
    ):
        """Every test of diffusers' unittest-style ``StableDiffusionInstructPix2PixPipelineFastTests``
        (its own and those of ``PipelineTesterMixin``, ``PipelineLatentTesterMixin`` and
        ``PipelineKarrasSchedulerTesterMixin``), with ``pipeline_class`` ours."""

        pipeline_class = RewardConditionedPix2PixPipeline

        def setUp(self):
            reason = INAPPLICABLE.get(self._testMethodName)
            if reason:
                self.skipTest(f"inapplicable: {reason}")
            super().setUp()
            # Some of the class's tests build the stock class by name rather than `self.pipeline_class`.
            self._stock_name = _replaced(ip2p_tests, "StableDiffusionInstructPix2PixPipeline", RewardConditionedPix2PixPipeline)
            self._stock_name.__enter__()
            self.addCleanup(self._stock_name.__exit__, None, None, None)

        def get_dummy_components(self):
            with _replaced(ip2p_tests, "CLIPTokenizer", _LocalTokenizer):
                return _with_reward_conditioner(super().get_dummy_components())

        def _dummy_inputs(self):
            return self.get_dummy_inputs("cpu")

        def test_encode_prompt_works_in_isolation(self, *args, **kwargs):
            embeds = _feedback_embeds(self.get_dummy_components())
            get_dummy_inputs = self.get_dummy_inputs
            self.get_dummy_inputs = lambda *a, **k: {**get_dummy_inputs(*a, **k), "reward_feedback_embeds": embeds}
            try:
                super().test_encode_prompt_works_in_isolation(*args, **kwargs)
            finally:
                del self.get_dummy_inputs
