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

Both scripts run under ``run_training_script.py``, which times every ``Accelerator.backward`` (one
per optimiser step): samples/s is counted from the end of the first ``--warmup`` steps to the
last, so start-up (imports, loading, data preparation) is left out alike. Peak memory is the
process's peak RSS (``ru_maxrss`` from ``wait4``). Variants run interleaved, ``--repeats`` rounds;
the median of each is kept. Writes ``benchmarks/results/training_throughput.json``.

diffusers' script imports torchvision only for a few tensor transforms, and torchvision has no CPU
build here: its process gets a small stand-in (``benchmarks/torchvision_stub``: Compose,
CenterCrop, RandomCrop, RandomHorizontalFlip, Lambda on tensors) on its path, after transformers
and diffusers are imported, so they still see no torchvision.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
RUNNER = HERE / "run_training_script.py"


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


def command(variant: str, base: Path, dataset: Path, out: Path, steps: int, batch: int, checkout: Path,
            times: Path) -> list[str]:
    common = ["--pretrained_model_name_or_path", str(base), "--dataset_name", str(dataset), "--output_dir", str(out),
              "--resolution", "32", "--train_batch_size", str(batch), "--max_train_steps", str(steps),
              "--learning_rate", "1e-4", "--seed", "0", "--mixed_precision", "no", "--checkpointing_steps", "100000"]
    runner = [sys.executable, str(RUNNER), str(times)]
    if variant == "diffusers_full":
        common[1] = str(base.parent / "base-text-to-image")
        return [*runner, "--torchvision-stub", str(checkout / THEIR_SCRIPT), *common,
                "--original_image_column", "source_image", "--edit_prompt_column", "instruction",
                "--edited_image_column", "edited_image", "--center_crop", "--report_to", "all"]
    extra = {"editforge_full_baseline": ["--full", "--without_rewards"], "editforge_full_reward": ["--full"],
             "editforge_lora_reward": ["--rank", "4"]}[variant]
    return [*runner, str(OUR_SCRIPT), *common, "--center_crop", "--num_validation_images", "0", "--no-progress",
            "--report_to", "none", *extra]


def run(cmd: list[str], env: dict, times: Path, warmup: int, batch: int) -> dict:
    """Samples/s over the steps after ``warmup`` (from the step times), wall seconds and peak RSS
    (MiB) of one process."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[1:5])} failed:\n{stderr[-3000:]}")
    stamps = json.loads(times.read_text())
    if len(stamps) <= warmup + 1:
        raise RuntimeError(f"only {len(stamps)} steps timed; need more than {warmup + 1}")
    rate = (len(stamps) - 1 - warmup) * batch / (stamps[-1] - stamps[warmup])
    return {"samples_per_s": round(rate, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "wall_s": round(elapsed, 2), "steps_timed": len(stamps) - 1 - warmup}


def per_model(text: str) -> dict[str, int]:
    """``"tiny=120,small=40"`` -> ``{"tiny": 120, "small": 40}``."""
    return {name: int(value) for name, value in (item.split("=") for item in text.split(","))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers-checkout", required=True, type=Path, help="a local huggingface/diffusers checkout")
    parser.add_argument("--models", default="tiny,small", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--steps", default="tiny=120,small=40", help="steps per run, per model")
    parser.add_argument("--warmup", default="tiny=20,small=5", help="first steps left out of the rate, per model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the median rate of each is kept")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "editforge-training-bench")
    args = parser.parse_args()
    if not (args.diffusers_checkout / THEIR_SCRIPT).is_file():
        raise SystemExit(f"{args.diffusers_checkout} has no {THEIR_SCRIPT}")
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown model(s) {sorted(unknown)}; expected some of {sorted(MODELS)}")
    steps_of, warmup_of = per_model(args.steps), per_model(args.warmup)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    variants = ("diffusers_full", "editforge_full_baseline", "editforge_full_reward", "editforge_lora_reward")
    results = {}
    for model in models:
        base, dataset = prepare(args.workdir, args.items, model)
        steps, warmup = steps_of[model], warmup_of[model]
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for round_index in range(args.repeats):
            for variant in variants:  # interleaved, so drifting machine load hits all alike
                out, times = args.workdir / model / f"out-{variant}", args.workdir / model / f"times-{variant}.json"
                measured = run(command(variant, base, dataset, out, steps, args.batch, args.diffusers_checkout, times),
                               env, times, warmup, args.batch)
                runs[variant].append(measured)
                print(f"{model} round {round_index}: {variant}: {measured['samples_per_s']:.1f} samples/s, "
                      f"peak RSS {measured['peak_rss_mb']:.0f} MB", flush=True)
        best = {v: statistics.median(r["samples_per_s"] for r in runs[v]) for v in variants}
        peak = {v: min(r["peak_rss_mb"] for r in runs[v]) for v in variants}
        widths, layers = MODELS[model]
        results[model] = {
            "unet": {"block_out_channels": widths, "layers_per_block": layers, "parameters": unet_parameters(base)},
            "steps": steps, "warmup_steps": warmup,
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
