"""Benchmark: peak memory of LoRA vs full fine-tune training of the SD3 InstructPix2Pix trainer.

    python benchmarks/sd3_training_memory.py [--layers 6 --heads 12] [--steps 3]

An SD3-shaped text-to-image base at reduced size (``--layers`` joint blocks of ``--heads`` x 64,
patch 2, 16 latent channels; the tiny CLIP pair and VAE of ``editforge.testing``, no T5) is saved
once; ``training/train_sd3_pix2pix.py --with_mask`` then trains it (widened 16 -> 48 channels) on
64x64 synthetic triplets for ``--steps`` steps, batch 2, each variant in a fresh process: LoRA rank
16 (+ the patch embedding) and ``--full``. Peak memory is the process's peak RSS (``ru_maxrss``
from ``wait4``), which includes ~600 MB of libraries both variants share. Writes
``benchmarks/results/sd3_training_memory.json``. Target (issue 14): LoRA <= 0.8 of full.
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

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "sd3_training_memory.json"
SCRIPT = ROOT / "training" / "train_sd3_pix2pix.py"


def make_base(folder: Path, layers: int, heads: int) -> int:
    """An SD3-shaped text-to-image pipeline folder; returns the transformer's parameter count."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from editforge.testing.tiny_models import tiny_sd3_components

    components = tiny_sd3_components(seed=0, in_channels=16, latent_channels=16)
    components["transformer"] = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=layers, attention_head_dim=64,
        num_attention_heads=heads, joint_attention_dim=32, caption_projection_dim=heads * 64, pooled_projection_dim=64)
    StableDiffusion3Pipeline(**components).save_pretrained(folder)
    return sum(p.numel() for p in components["transformer"].parameters())


def make_data(folder: Path) -> None:
    from editforge.dataset_builders import build_dataset
    from editforge.dataset_builders.synthetic import write_synthetic_dataset

    manifest = write_synthetic_dataset(folder / "synth", n=16, seed=3, imperfect_rate=0.0, width=64, height=64,
                                       progress=False)
    build_dataset("manifest", manifest, folder / "dataset", progress=False)


def run(base: Path, data: Path, out: Path, steps: int, full: bool) -> dict:
    command = [sys.executable, str(SCRIPT), "--pretrained_model_name_or_path", str(base), "--dataset_name", str(data),
               "--output_dir", str(out), "--with_mask", "--resolution", "64", "--train_batch_size", "2",
               "--max_train_steps", str(steps), "--learning_rate", "1e-4", "--checkpointing_steps", "0",
               "--num_validation_images", "0", "--report_to", "none", "--no-progress", "--rank", "16",
               *(["--full"] if full else [])]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    log = process.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training failed ({'full' if full else 'lora'}):\n{log[-3000:]}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - started, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="editforge-sd3-memory-") as tmp:
        tmp = Path(tmp)
        parameters = make_base(tmp / "base", args.layers, args.heads)
        make_data(tmp)
        runs = {name: run(tmp / "base", tmp / "dataset", tmp / name, args.steps, full=name == "full")
                for name in ("lora", "full")}
    result = {
        "benchmark": "sd3_training_memory",
        "what": "peak RSS of train_sd3_pix2pix.py --with_mask: LoRA rank 16 + patch embedding vs --full",
        "transformer_parameters": parameters,
        "settings": {"layers": args.layers, "heads": args.heads, "head_dim": 64, "resolution": 64, "batch": 2,
                     "steps": args.steps, "optimizer": "AdamW (fused)"},
        "runs": runs,
        "lora_over_full_peak_rss": round(runs["lora"]["peak_rss_mb"] / runs["full"]["peak_rss_mb"], 3),
        "target": "<= 0.8",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
