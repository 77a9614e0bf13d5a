"""Run a training script with every optimiser step timed, for benchmarks/training_throughput.py
and benchmarks/dpo_throughput.py.

    python benchmarks/run_training_script.py STEP_TIMES.json [--torchvision-stub] [--pil-transforms]
        [--wandb-stub] [--cpu-times] SCRIPT [ARGS...]

The same clock for any accelerate script: ``Accelerator.backward`` is wrapped to note the time of
each call, and the times are written to ``STEP_TIMES.json`` when the script ends. Throughput from
them leaves out start-up (imports, loading, data preparation) and the first steps.

``--torchvision-stub`` (diffusers' example scripts): torchvision has no CPU build here, and those
scripts import it only for a few tensor transforms. transformers and diffusers decide at import
time whether torchvision is installed, and would take the stand-in for the real package if it were
on the path then, so the libraries are imported first; only then does ``benchmarks/torchvision_stub``
go on the path, for the script's own ``from torchvision import transforms``.

``--pil-transforms`` (implies ``--torchvision-stub``; diffusers' ``train_diffusion_dpo.py``, whose
transforms start from PIL images): adds ``Resize``, ``InterpolationMode``, ``ToTensor`` and
``Normalize`` to the stand-in, and lets its crops and flip take a PIL image (turned into a uint8
``[C, H, W]`` tensor first, which ``ToTensor`` then scales to [0, 1] as it does a PIL image).

``--cpu-times``: also write the process's CPU time (``time.process_time()``) at each step to
``STEP_TIMES.cpu.json`` (beside the step times): with one intra-op thread, a measure of the work a
step takes that other processes on a shared machine hardly change.

``--wandb-stub``: an empty ``wandb`` module for scripts that import it at the top but use it only
when validating with wandb as the tracker. It has no package metadata, so accelerate does not count
wandb as an available tracker.
"""

import atexit
import importlib.machinery
import json
import runpy
import sys
import time
import types
from pathlib import Path

import accelerate

FLAGS = ("--torchvision-stub", "--pil-transforms", "--wandb-stub", "--cpu-times")


def cpu_times_path(times_path: Path) -> Path:
    """Where ``--cpu-times`` writes the per-step CPU times of a run timed into ``times_path``."""
    return times_path.with_suffix(".cpu.json")


def import_libraries_first(pil_transforms: bool) -> None:
    """Import what diffusers' example scripts import, so that the libraries have decided that
    torchvision is missing before the stand-in goes on the path."""
    import datasets  # noqa: F401
    import diffusers.optimization  # noqa: F401
    import diffusers.training_utils  # noqa: F401
    from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    if pil_transforms:
        import diffusers.loaders  # noqa: F401
        import peft  # noqa: F401
        from transformers import AutoTokenizer  # noqa: F401
        from transformers.utils import import_utils

        import_utils.is_torchvision_available()  # cached from here on: False


def add_pil_transforms(transforms) -> None:
    """Extend the stand-in ``torchvision.transforms`` module for transforms that start from PIL."""
    import numpy as np
    import torch
    from PIL import Image

    def as_tensor(image):
        if isinstance(image, Image.Image):  # [C, H, W] uint8, as torchvision's pil_to_tensor
            return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        return image

    class InterpolationMode:
        NEAREST, BILINEAR, BICUBIC, LANCZOS = "nearest", "bilinear", "bicubic", "lanczos"

    filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "lanczos": Image.LANCZOS}

    class Resize:
        """A PIL image's shorter side to ``size`` (an int; as torchvision: the longer side is
        ``int(size * long / short)``), or to ``(height, width)``."""

        def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
            self.size, self.interpolation = size, interpolation

        def __call__(self, image):
            width, height = image.size
            if isinstance(self.size, int):
                short, long = sorted((width, height))
                new_short, new_long = self.size, int(self.size * long / short)
                new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
            else:
                new_h, new_w = self.size
            if (new_w, new_h) == (width, height):
                return image
            return image.resize((new_w, new_h), filters[self.interpolation])

    class ToTensor:
        def __call__(self, image):
            image = as_tensor(image)
            return image.float().div(255) if image.dtype == torch.uint8 else image

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

        def __call__(self, x):
            return (x - self.mean) / self.std

    def from_pil(cls):
        return type(cls.__name__, (cls,), {"__call__": lambda self, x: cls.__call__(self, as_tensor(x))})

    for cls in (InterpolationMode, Resize, ToTensor, Normalize):
        setattr(transforms, cls.__name__, cls)
    for name in ("CenterCrop", "RandomCrop", "RandomHorizontalFlip"):
        setattr(transforms, name, from_pil(getattr(transforms, name)))


if __name__ == "__main__":
    times_path, arguments = Path(sys.argv[1]), sys.argv[2:]
    flags = set()
    while arguments and arguments[0] in FLAGS:
        flags.add(arguments.pop(0))
    if flags & {"--torchvision-stub", "--pil-transforms"}:
        import_libraries_first("--pil-transforms" in flags)
        sys.path.insert(0, str(Path(__file__).resolve().parent / "torchvision_stub"))
        if "--pil-transforms" in flags:
            import torchvision.transforms

            add_pil_transforms(torchvision.transforms)
    if "--wandb-stub" in flags and "wandb" not in sys.modules:
        wandb = types.ModuleType("wandb")
        wandb.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        sys.modules["wandb"] = wandb

    times: list[float] = []
    cpu_times: list[float] = []
    backward = accelerate.Accelerator.backward

    def timed_backward(self, *args, **kwargs):
        result = backward(self, *args, **kwargs)
        times.append(time.perf_counter())
        if "--cpu-times" in flags:
            cpu_times.append(time.process_time())
        return result

    accelerate.Accelerator.backward = timed_backward
    atexit.register(lambda: times_path.write_text(json.dumps(times)))
    if "--cpu-times" in flags:
        atexit.register(lambda: cpu_times_path(times_path).write_text(json.dumps(cpu_times)))
    script, sys.argv = arguments[0], arguments
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")
