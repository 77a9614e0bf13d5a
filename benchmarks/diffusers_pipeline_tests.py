"""diffusers' own pipeline tests against RewardConditionedPix2PixPipeline: per-test result as JSON.

Runs ``tests/test_diffusers_pipeline_suite.py`` (diffusers' InstructPix2Pix fast-test classes, with their
``PipelineTesterMixin`` and the other mixins, imported by path from a diffusers checkout; our pipeline
class in place of the stock one, a ``reward_conditioner`` added to the dummy components) once per
checkout, in a fresh pytest process each, and writes ``benchmarks/results/diffusers_pipeline_tests.json``:
passed / failed / skipped per test, the reason of every skip, and which skipped tests are
inapplicable (and why). The installed diffusers is the one under test; a checkout gives only the tests.

Two generations of diffusers' InstructPix2Pix tests are understood; run both::

    # a diffusers source tree (any clone; no install needed) and a work tree of the last commit
    # before diffusers moved these tests to pytest style (#14339, a14d630211)
    git clone https://github.com/huggingface/diffusers /tmp/diffusers
    git -C /tmp/diffusers worktree add --detach /tmp/diffusers-legacy a14d630211^
    pip install parameterized requests-mock scipy torchsde   # diffusers' test dependencies these files use
    python benchmarks/diffusers_pipeline_tests.py \\
        --diffusers-checkout /tmp/diffusers --diffusers-checkout /tmp/diffusers-legacy

Exit status 1 when any test failed or errored.
"""

from __future__ import annotations

import sys
from pathlib import Path

from diffusers_suite_runner import ROOT, AdapterSuite, main

RESULT = ROOT / "benchmarks" / "results" / "diffusers_pipeline_tests.json"
IP2P_TESTS = Path("tests/pipelines/stable_diffusion/test_stable_diffusion_instruction_pix2pix.py")
ADAPTED = {
    "test_encode_prompt_works_in_isolation": (
        "checks nothing here: stock InstructPix2Pix (and so ours) has no `encode_prompt`, and then diffusers'"
        " unittest-style mixin returns early (a pass) while the pytest-style one skips. Should it run, the"
        " precomputed reward_feedback_embeds join its inputs (a pipeline without a text encoder cannot encode"
        " the reward feedback); tests/test_reward_pipeline.py covers that case"
    ),
}


def _style(checkout: Path) -> str:
    text = (checkout / IP2P_TESTS).read_text(encoding="utf-8")
    if "StableDiffusionInstructPix2PixPipelineTesterConfig" in text:
        return "pytest (tests/pipelines/testing_utils: PipelineTesterMixin, MemoryTesterMixin)"
    if "StableDiffusionInstructPix2PixPipelineFastTests" in text:
        return ("unittest (tests/pipelines/test_pipelines_common.py: PipelineTesterMixin, PipelineLatentTesterMixin,"
                " PipelineKarrasSchedulerTesterMixin)")
    return "unknown"


def _origin(name: str) -> str:
    if name.endswith("_equals_stock"):
        return "editforge: stands in for the inapplicable diffusers test " + name.removesuffix("_equals_stock")
    return "diffusers"


def _hub_tokenizer_cached() -> bool:
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache("hf-internal-testing/tiny-random-clip", name), str)
               for name in ("vocab.json", "merges.txt"))


def describe() -> dict:
    return {
        "benchmark": "diffusers_pipeline_tests",
        "what": "diffusers' own InstructPix2Pix pipeline tests run against editforge's RewardConditionedPix2PixPipeline",
        "pipeline": "editforge.pipelines.RewardConditionedPix2PixPipeline",
        "dummy_components": "diffusers' InstructPix2Pix dummy components + RewardConditioner.from_unet(unet,"
        " feedback_dim=text_encoder hidden size) (untrained: zero-initialised outputs)",
        "tokenizer": "hf-internal-testing/tiny-random-clip (local Hub cache)" if _hub_tokenizer_cached() else
        "a local CLIP tokenizer (hf-internal-testing/tiny-random-clip is not in the local Hub cache)",
        "adaptations": [
            "pipeline_class is RewardConditionedPix2PixPipeline; get_dummy_components adds reward_conditioner",
            "unittest-style class: tests that build StableDiffusionInstructPix2PixPipeline by name get ours",
            *ADAPTED.values(),
        ],
    }


ADAPTER = AdapterSuite("tests/test_diffusers_pipeline_suite.py", IP2P_TESTS, origin=_origin, style=_style, notes=ADAPTED)

if __name__ == "__main__":
    sys.exit(main(ADAPTER, __doc__.splitlines()[0], RESULT, describe))
