"""Benchmark: our training script beside diffusers' InstructPix2Pix training script.

    python benchmarks/training_throughput.py --diffusers-checkout PATH [--models tiny,small]

``PATH`` is a local checkout of huggingface/diffusers; its
``examples/instruct_pix2pix/train_instruct_pix2pix.py`` is run as it is (it is never copied into
this repository). Both scripts get the same model (editforge.testing's tiny InstructPix2Pix, its
UNet at two widths: ``tiny`` 32/64 channels, about 1M parameters, and ``small`` 128/256 with two
layers per block, about 22M, where the weights, gradients and optimiser state are a visible part of
the memory; for diffusers' script the text-to-image form, a 4-channel ``conv_in`` that the script
widens to the same 8-channel UNet), the same synthetic dataset (canonical features, 32x32), the same
batch, learning rate, seed and steps.

Runs, each in a fresh process:

- ``diffusers_full``: diffusers' script (a full UNet fine-tune; it has no LoRA);
- ``editforge_full_baseline``: ours, ``--full --without_rewards`` (the same model and objective);
- ``editforge_full_reward``: ours, ``--full`` with the reward conditioner;
- ``editforge_lora_reward``: ours, LoRA rank 4 on the UNet + the reward conditioner.

Samples/s excludes start-up: each variant runs for ``--short-steps`` and ``--steps`` and the rate
is (steps difference x batch) / (wall-time difference). Peak memory is the process's peak RSS
(``ru_maxrss`` from ``wait4``) of the long run. Writes ``benchmarks/results/training_throughput.json``.

diffusers' script imports torchvision only for a few tensor transforms, and torchvision has no CPU
build here: the benchmark puts a small stand-in (``benchmarks/torchvision_stub``: Compose,
CenterCrop, RandomCrop, RandomHorizontalFlip, Lambda on tensors) on that process's path, after
transformers and diffusers are imported (``run_with_torchvision_stub.py``), so they still see no torchvision.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT = HERE / "results" / "training_throughput.json"
OUR_SCRIPT = ROOT / "training" / "train_reward_pix2pix.py"
THEIR_SCRIPT = Path("examples") / "instruct_pix2pix" / "train_instruct_pix2pix.py"
STUB_RUNNER = HERE / "run_with_torchvision_stub.py"


MODELS = {
    # name: (UNet block widths, layers per block); the rest is editforge.testing's tiny InstructPix2Pix
    "tiny": ((32, 64), 1),
    "small": ((128, 256), 2),
}


def prepare(workdir: Path, items: int, model: str) -> tuple[Path, Path]:
    """The InstructPix2Pix base (ours starts from it), the same model with a text-to-image UNet
    (4 input channels: diffusers' script widens ``conv_in`` to 8 itself), and the dataset."""
    from diffusers import UNet2DConditionModel

    from editforge.dataset_builders import build_dataset
    from editforge.dataset_builders.synthetic import write_synthetic_dataset
    from editforge.testing.tiny_models import tiny_instruct_pix2pix_pipeline

    base, dataset = workdir / model / "base", workdir / "dataset"
    if not (base / "model_index.json").is_file():
        pipe = tiny_instruct_pix2pix_pipeline(seed=0)
        widths, layers = MODELS[model]
        config = {**pipe.unet.config, "block_out_channels": widths, "layers_per_block": layers}
        for folder, in_channels in ((base, 8), (workdir / model / "base-text-to-image", 4)):
            pipe.save_pretrained(folder)
            torch.manual_seed(0)
            UNet2DConditionModel.from_config({**config, "in_channels": in_channels}).save_pretrained(folder / "unet")
    if not (dataset / "README.md").is_file():
        manifest = write_synthetic_dataset(workdir / "synth", n=items, seed=0, imperfect_rate=0.5, width=32,
                                           height=32, progress=False)
        build_dataset("manifest", manifest, dataset, rewards_from="ground_truth", progress=False)
    return base, dataset


def unet_parameters(base: Path) -> int:
    from diffusers import UNet2DConditionModel

    return sum(p.numel() for p in UNet2DConditionModel.from_pretrained(base / "unet").parameters())


def command(variant: str, base: Path, dataset: Path, out: Path, steps: int, batch: int, checkout: Path) -> list[str]:
    common = ["--pretrained_model_name_or_path", str(base), "--dataset_name", str(dataset), "--output_dir", str(out),
              "--resolution", "32", "--train_batch_size", str(batch), "--max_train_steps", str(steps),
              "--learning_rate", "1e-4", "--seed", "0", "--mixed_precision", "no", "--checkpointing_steps", "100000"]
    if variant == "diffusers_full":
        common[1] = str(base.parent / "base-text-to-image")
        return [sys.executable, str(STUB_RUNNER), str(checkout / THEIR_SCRIPT), *common, "--original_image_column", "source_image",
                "--edit_prompt_column", "instruction", "--edited_image_column", "edited_image",
                "--center_crop", "--report_to", "all"]
    ours = [sys.executable, str(OUR_SCRIPT), *common, "--center_crop", "--num_validation_images", "0", "--no-progress",
            "--report_to", "none"]
    extra = {"editforge_full_baseline": ["--full", "--without_rewards"], "editforge_full_reward": ["--full"],
             "editforge_lora_reward": ["--rank", "4"]}[variant]
    return ours + extra


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[1:3])} failed:\n{stderr[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers-checkout", required=True, type=Path, help="a local huggingface/diffusers checkout")
    parser.add_argument("--models", default="tiny,small", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--steps", default="tiny=100,small=30", help="long run steps per model")
    parser.add_argument("--short-steps", default="tiny=20,small=10", help="short run steps per model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best rate of each is kept")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "editforge-training-bench")
    args = parser.parse_args()
    if not (args.diffusers_checkout / THEIR_SCRIPT).is_file():
        raise SystemExit(f"{args.diffusers_checkout} has no {THEIR_SCRIPT}")
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown model(s) {sorted(unknown)}; expected some of {sorted(MODELS)}")
    long_steps = {k: int(v) for k, v in (item.split("=") for item in args.steps.split(","))}
    short_steps = {k: int(v) for k, v in (item.split("=") for item in args.short_steps.split(","))}

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    variants = ("diffusers_full", "editforge_full_baseline", "editforge_full_reward", "editforge_lora_reward")
    results = {}
    for model in models:
        base, dataset = prepare(args.workdir, args.items, model)
        short, long = short_steps[model], long_steps[model]
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for round_index in range(args.repeats):
            for variant in variants:  # interleaved, so drifting machine load hits all alike
                timings = {}
                for steps in (short, long):
                    out = args.workdir / model / f"out-{variant}-{steps}"
                    timings[steps] = run(command(variant, base, dataset, out, steps, args.batch,
                                                 args.diffusers_checkout), env)
                (short_s, _), (long_s, peak_mb) = timings[short], timings[long]
                rate = (long - short) * args.batch / max(1e-9, long_s - short_s)
                runs[variant].append({"samples_per_s": round(rate, 2), "peak_rss_mb": round(peak_mb, 1),
                                      "wall_s": {"short": round(short_s, 2), "long": round(long_s, 2)}})
                print(f"{model} round {round_index}: {variant}: {rate:.1f} samples/s, peak RSS {peak_mb:.0f} MB",
                      flush=True)
        best = {v: max(r["samples_per_s"] for r in runs[v]) for v in variants}
        peak = {v: min(r["peak_rss_mb"] for r in runs[v]) for v in variants}
        widths, layers = MODELS[model]
        results[model] = {
            "unet": {"block_out_channels": widths, "layers_per_block": layers, "parameters": unet_parameters(base)},
            "steps": [short, long],
            "samples_per_s": best,
            "peak_rss_mb": peak,
            "ratio_samples_per_s_ours_full_vs_diffusers_full":
                round(best["editforge_full_baseline"] / best["diffusers_full"], 3),
            "ratio_samples_per_s_ours_reward_full_vs_diffusers_full":
                round(best["editforge_full_reward"] / best["diffusers_full"], 3),
            "lora_peak_rss_below_full": peak["editforge_lora_reward"] < peak["editforge_full_reward"],
            "runs": runs,
        }
    result = {
        "benchmark": "training_throughput",
        "setup": {"resolution": 32, "batch": args.batch, "dataset_items": args.items, "repeats": args.repeats,
                  "cpu_count": os.cpu_count(), "load_average_after": os.getloadavg()[0],
                  "platform": platform.platform(), "python": platform.python_version(),
                  "date": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "targets": {"samples_per_s_ratio": ">= 1.0", "lora_peak_rss": "< full fine-tune"},
        "models": results,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({m: {k: v for k, v in r.items() if k != "runs"} for m, r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
