"""Run a diffusers example training script with the torchvision stand-in beside it.

    python benchmarks/run_with_torchvision_stub.py SCRIPT [ARGS...]

transformers and diffusers decide at import time whether torchvision is installed, and take the
stand-in for the real package if it is on the path then (and import parts of torchvision it does
not have). So the libraries the example script needs are imported first, without it; only then
does the stand-in go on the path, for the script's own ``from torchvision import transforms``.
"""

import runpy
import sys
from pathlib import Path

import accelerate  # noqa: F401
import datasets  # noqa: F401
import diffusers.optimization  # noqa: F401
import diffusers.training_utils  # noqa: F401
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel  # noqa: F401
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent / "torchvision_stub"))
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
