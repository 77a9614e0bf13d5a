"""Run a training script with every optimiser step timed, for benchmarks/training_throughput.py.

    python benchmarks/run_training_script.py STEP_TIMES.json [--torchvision-stub] SCRIPT [ARGS...]

The same clock for any accelerate script: ``Accelerator.backward`` is wrapped to note the time of
each call, and the times are written to ``STEP_TIMES.json`` when the script ends. Throughput from
them leaves out start-up (imports, loading, data preparation) and the first steps.

``--torchvision-stub`` (diffusers' example scripts): torchvision has no CPU build here, and those
scripts import it only for a few tensor transforms. transformers and diffusers decide at import
time whether torchvision is installed, and would take the stand-in for the real package if it were
on the path then, so the libraries are imported first; only then does ``benchmarks/torchvision_stub``
go on the path, for the script's own ``from torchvision import transforms``.
"""

import atexit
import json
import runpy
import sys
import time
from pathlib import Path

import accelerate

if __name__ == "__main__":
    times_path, arguments = Path(sys.argv[1]), sys.argv[2:]
    if arguments and arguments[0] == "--torchvision-stub":
        import datasets  # noqa: F401
        import diffusers.optimization  # noqa: F401
        import diffusers.training_utils  # noqa: F401
        from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel  # noqa: F401
        from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

        sys.path.insert(0, str(Path(__file__).resolve().parent / "torchvision_stub"))
        arguments = arguments[1:]

    times: list[float] = []
    backward = accelerate.Accelerator.backward

    def timed_backward(self, *args, **kwargs):
        result = backward(self, *args, **kwargs)
        times.append(time.perf_counter())
        return result

    accelerate.Accelerator.backward = timed_backward
    atexit.register(lambda: times_path.write_text(json.dumps(times)))
    script, sys.argv = arguments[0], arguments
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")
