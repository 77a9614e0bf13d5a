"""diffusers' own SD3 pipeline tests against StableDiffusion3InstructPix2PixPipeline: per-test result as JSON.

Runs ``tests/test_diffusers_sd3_suite.py`` (diffusers' ``StableDiffusion3PipelineFastTests`` with its
``PipelineTesterMixin``, imported by path from a diffusers checkout; our class in place of the stock one,
a widened dummy transformer, an ``image`` in the call) once per checkout, each in a fresh pytest process,
and writes ``benchmarks/results/diffusers_sd3_pipeline_tests.json``: passed / failed / skipped per test,
the reason of every skip, and which skipped tests are inapplicable (and why). The installed diffusers is
the one under test; a checkout gives only the tests.

    git clone https://github.com/huggingface/diffusers /tmp/diffusers
    pip install parameterized requests-mock scipy torchsde   # diffusers' test dependencies
    python benchmarks/diffusers_sd3_pipeline_tests.py --diffusers-checkout /tmp/diffusers

Exit status 1 when any test failed or errored.
"""

from __future__ import annotations

import sys
from pathlib import Path

from diffusers_suite_runner import ROOT, AdapterSuite, main

RESULT = ROOT / "benchmarks" / "results" / "diffusers_sd3_pipeline_tests.json"
SD3_TESTS = Path("tests/pipelines/stable_diffusion_3/test_pipeline_stable_diffusion_3.py")
EDITFORGE_TESTS = {"test_inference_equals_stock": "editforge: stands in for the inapplicable diffusers test test_inference"}


def describe() -> dict:
    return {
        "benchmark": "diffusers_sd3_pipeline_tests",
        "what": "diffusers' own SD3 pipeline tests (StableDiffusion3PipelineFastTests + PipelineTesterMixin) run"
                " against editforge's StableDiffusion3InstructPix2PixPipeline",
        "pipeline": "editforge.pipelines.StableDiffusion3InstructPix2PixPipeline",
        "classes": {
            "TestSD3Pix2PixWithDiffusersSD3Tests": "dummy transformer widened 4 -> 8 input channels (image, no mask)",
            "TestSD3Pix2PixMaskWithDiffusersSD3Tests": "dummy transformer widened 4 -> 12 (image + mask; the call"
                                                        " leaves mask_image out: free-form)",
        },
        "adaptations": [
            "pipeline_class is StableDiffusion3InstructPix2PixPipeline; the dummy transformer's patch embedding is"
            " widened with widen_patch_embedding (new weights zero)",
            "get_dummy_inputs adds image = a seeded 32x32 tensor in 0..1 (as diffusers' SD3 img2img tests);"
            " batch_params gain image, params gain image and image_guidance_scale",
            "offline: a local CLIP tokenizer replaces hf-internal-testing/tiny-random-clip and the T5 encoder is"
            " left out (text_encoder_3=None, which SD3 allows); hf-internal-testing/tiny-random-t5 cannot be fetched",
        ],
    }


ADAPTER = AdapterSuite("tests/test_diffusers_sd3_suite.py", SD3_TESTS,
                       origin=lambda name: EDITFORGE_TESTS.get(name, "diffusers"),
                       style=lambda checkout: "unittest (tests/pipelines/test_pipelines_common.py: PipelineTesterMixin)")

if __name__ == "__main__":
    sys.exit(main(ADAPTER, __doc__.splitlines()[0], RESULT, describe))
