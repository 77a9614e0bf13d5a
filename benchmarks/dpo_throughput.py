"""Benchmark: our Diffusion-DPO script beside diffusers' train_diffusion_dpo.py.

    python benchmarks/dpo_throughput.py [--diffusers-checkout PATH] [--steps 60] [--repeats 3]

``PATH`` (default: ``$EDITFORGE_DIFFUSERS_CHECKOUT``) is a local huggingface/diffusers checkout,
or a bare clone of it (a mirror): ``examples/research_projects/diffusion_dpo/train_diffusion_dpo.py``
is run from the checkout as it is, or, from a bare clone, written out of ``git show REV:...`` into
the (temporary) work folder at run time; it is never copied into this repository, nor patched.

Both scripts get the same model (editforge.testing's tiny SD1.5-shaped text-to-image pipeline: its
UNet, about 1M parameters, VAE, CLIP text encoder and tokenizer, saved once and loaded by both),
the same pairs (synthetic-world scenes at 32x32: for each caption the image that shows it and one
that does not, the preferred one first in half of the rows; no ties), the same batch of pairs,
LoRA rank (targets ``to_k/to_q/to_v/to_out.0``, alpha = rank, gaussian init in both), learning
rate, seed, steps and DPO strength (diffusers' SD ``--beta_dpo 2500`` is our ``5000``: the same
loss). diffusers' script reads the Pick-a-Pic layout (``caption``, ``jpg_0``, ``jpg_1``,
``label_0``) from a Parquet folder; ours reads the same rows after ``build-dataset --format
pickapic`` (canonical pair features), trained with ``--alignment single_pair`` (one comparison per
row, as diffusers' script). diffusers' script also gets ``--no_hflip`` (ours does not flip),
``--lr_warmup_steps 0`` (our default) and ``--vae_encode_batch_size`` = 2 x batch (ours encodes a
batch's images in one VAE call, theirs in chunks of that size).

Each run is a fresh process under ``run_training_script.py``, which times every
``Accelerator.backward`` (one per optimiser step): samples/s (pairs per second) is counted from
the end of the first ``--warmup`` steps to the last, so start-up (imports, loading, data
preparation) and the end (saving) are left out alike. Peak memory is the process's peak RSS
(``ru_maxrss`` from ``wait4``). Both run with ``OMP_NUM_THREADS=1`` (one intra-op thread each: the
machine's cores are shared, and one thread gives steadier numbers). Runs alternate, ours then
theirs, ``--repeats`` rounds; the medians are kept. Writes ``benchmarks/results/dpo_throughput.json``.

diffusers' script imports torchvision (for its PIL transforms) and wandb at the top; neither is
installed here, so its process gets the runner's stand-ins: ``--pil-transforms`` (the project's
``benchmarks/torchvision_stub`` plus Resize, ToTensor, Normalize, InterpolationMode on PIL images)
and ``--wandb-stub`` (an empty module: wandb is used only for validation images, which are off).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from diffusers_suite_runner import CHECKOUT_VARIABLE, _git, version
from run_training_script import cpu_times_path
from training_throughput import run, unet_parameters

RESULT = HERE / "results" / "dpo_throughput.json"
OUR_SCRIPT = ROOT / "training" / "train_diffusion_dpo.py"
THEIR_SCRIPT = Path("examples") / "research_projects" / "diffusion_dpo" / "train_diffusion_dpo.py"
RUNNER = HERE / "run_training_script.py"
# editforge_cached: ours with --cache_latents --cache_latent_distribution --cache_text_embeddings (both images
# of every pair encoded once before training, keeping the latent distribution so that every step draws a
# latent from it as the VAE's encoding does: the same training as encoding every step; and each distinct
# prompt once; that encoding is start-up, outside the timed window, and inside each run's wall time, which
# is reported beside the rate)
VARIANTS = ("editforge", "editforge_cached", "diffusers")
RESOLUTION = 32
BETA = {"editforge": 5000, "editforge_cached": 5000, "diffusers": 2500}  # one loss: ours is the paper's beta, theirs half of it


def their_script(checkout: Path, workdir: Path) -> tuple[Path, str | None]:
    """diffusers' script by path in a work tree, or written out of a bare clone into ``workdir``;
    and the commit it comes from."""
    commit = _git(checkout, "rev-parse", "HEAD")
    if (checkout / THEIR_SCRIPT).is_file():
        return checkout / THEIR_SCRIPT, commit
    if commit is None:
        raise SystemExit(f"{checkout} is neither a diffusers checkout with {THEIR_SCRIPT} nor a git clone of one")
    try:
        text = subprocess.run(["git", "-C", str(checkout), "show", f"{commit}:{THEIR_SCRIPT.as_posix()}"],
                              capture_output=True, text=True, check=True).stdout
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"{checkout} at {commit} has no {THEIR_SCRIPT}: {error.stderr.strip()}") from None
    script = workdir / "diffusers" / commit[:12] / THEIR_SCRIPT
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(text)
    return script, commit


def png(array) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def prepare(workdir: Path, items: int) -> tuple[Path, Path, Path]:
    """The tiny text-to-image base, the Pick-a-Pic-style Parquet folder (diffusers' script reads
    it) and the same rows built into our canonical pair features."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from editforge.dataset_builders import build_dataset
    from editforge.dataset_builders.synthetic.generator import generate_triplet
    from editforge.testing.tiny_models import tiny_text_to_image_pipeline

    base, pickapic, pairs = workdir / "base", workdir / f"pickapic-{items}", workdir / f"pairs-{items}"
    if not (base / "model_index.json").is_file():
        tiny_text_to_image_pipeline(seed=0).save_pretrained(base)
    if not (pickapic / "train.parquet").is_file():
        rows = []
        for index in range(items):  # the caption's scene (ideal edit) against the unedited scene
            item = generate_triplet(0, index, RESOLUTION, RESOLUTION, imperfect_rate=0.0)
            first_wins = index % 2 == 0
            good, bad = png(item.ideal), png(item.source)
            rows.append({"caption": item.target_caption, "jpg_0": good if first_wins else bad,
                         "jpg_1": bad if first_wins else good, "label_0": 1.0 if first_wins else 0.0,
                         "ranking_id": index})
        pickapic.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), pickapic / ".train.parquet.partial")
        (pickapic / ".train.parquet.partial").rename(pickapic / "train.parquet")
    if not (pairs / "README.md").is_file():
        build_dataset("pickapic", pickapic, pairs, progress=False)
    return base, pickapic, pairs


def command(variant: str, base: Path, pickapic: Path, pairs: Path, out: Path, steps: int, batch: int, rank: int,
            script: Path, times: Path) -> list[str]:
    common = ["--pretrained_model_name_or_path", str(base), "--output_dir", str(out),
              "--resolution", str(RESOLUTION), "--train_batch_size", str(batch), "--max_train_steps", str(steps),
              "--rank", str(rank), "--learning_rate", "1e-4", "--seed", "0", "--mixed_precision", "no",
              "--checkpointing_steps", "100000", "--beta_dpo", str(BETA[variant])]
    runner = [sys.executable, str(RUNNER), str(times), "--cpu-times"]
    if variant == "diffusers":
        return [*runner, "--pil-transforms", "--wandb-stub", str(script), *common,
                "--dataset_name", str(pickapic), "--dataset_split_name", "train", "--no_hflip",
                "--lr_warmup_steps", "0", "--vae_encode_batch_size", str(2 * batch), "--report_to", "all"]
    ours = [*runner, str(OUR_SCRIPT), *common, "--dataset_name", str(pairs), "--alignment", "single_pair",
            "--center_crop", "--num_validation_images", "0", "--no-progress", "--report_to", "none"]
    if variant == "editforge_cached":
        return [*ours, "--cache_latents", "--cache_latent_distribution", "--cache_text_embeddings"]
    return ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers-checkout", type=Path, default=os.environ.get(CHECKOUT_VARIABLE),
                        help=f"a local huggingface/diffusers checkout or bare clone (default: ${CHECKOUT_VARIABLE})")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the rate")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step (each pair: two images)")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--items", type=int, default=256, help="pairs in the dataset (a multiple of --batch)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the medians are kept")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "editforge-dpo-bench")
    args = parser.parse_args()
    if args.diffusers_checkout is None:
        raise SystemExit(f"give --diffusers-checkout PATH or set {CHECKOUT_VARIABLE}")
    if args.items % args.batch:
        raise SystemExit("--items must be a multiple of --batch (diffusers' loader keeps a short last batch)")
    checkout = args.diffusers_checkout.resolve()
    script, commit = their_script(checkout, args.workdir)
    base, pickapic, pairs = prepare(args.workdir, args.items)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    commands = {}
    for round_index in range(args.repeats):
        for variant in VARIANTS:  # interleaved, so drifting machine load hits both alike
            out, times = args.workdir / f"out-{variant}", args.workdir / f"times-{variant}.json"
            cmd = command(variant, base, pickapic, pairs, out, args.steps, args.batch, args.rank, script, times)
            commands[variant] = " ".join(cmd[1:]).replace(str(ROOT) + "/", "")
            measured = run(cmd, env, times, args.warmup, args.batch)
            cpu = json.loads(cpu_times_path(times).read_text())
            measured["samples_per_cpu_s"] = round(
                args.batch * (len(cpu) - 1 - args.warmup) / (cpu[-1] - cpu[args.warmup]), 2)
            runs[variant].append(measured)
            print(f"round {round_index}: {variant}: {measured['samples_per_s']:.1f} pairs/s, "
                  f"peak RSS {measured['peak_rss_mb']:.0f} MB", flush=True)
    rate = {v: statistics.median(r["samples_per_s"] for r in runs[v]) for v in VARIANTS}
    cpu_rate = {v: statistics.median(r["samples_per_cpu_s"] for r in runs[v]) for v in VARIANTS}
    peak = {v: statistics.median(r["peak_rss_mb"] for r in runs[v]) for v in VARIANTS}
    wall = {v: statistics.median(r["wall_s"] for r in runs[v]) for v in VARIANTS}
    ratio = round(rate["editforge"] / rate["diffusers"], 3)
    result = {
        "benchmark": "dpo_throughput",
        "command": f"python benchmarks/dpo_throughput.py --diffusers-checkout {checkout} --steps {args.steps} "
                   f"--warmup {args.warmup} --batch {args.batch} --rank {args.rank} --items {args.items} "
                   f"--repeats {args.repeats}",
        "diffusers_script": {"checkout": str(checkout), "path": str(THEIR_SCRIPT), "commit": commit,
                             "ran_from": str(script)},
        "setup": {"resolution": RESOLUTION, "batch_pairs": args.batch, "lora_rank": args.rank, "steps": args.steps,
                  "warmup_steps": args.warmup, "steps_timed": args.steps - 1 - args.warmup,
                  "dataset_pairs": args.items, "repeats": args.repeats,
                  "order": "editforge, editforge_cached, diffusers, ... (interleaved)",
                  "unet_parameters": unet_parameters(base), "beta_dpo": BETA,
                  "threads": "OMP_NUM_THREADS=1 for both scripts",
                  "timing": "samples/s = pairs per second between the backward() of step warmup and of the last step "
                            "(run_training_script.py times each Accelerator.backward); start-up, data preparation "
                            "and saving are outside that window; wall_s: each process from start to exit (imports, "
                            "loading, caching, training, saving)",
                  "cpu_timing": "samples_per_cpu_s: the same steps over the process's CPU time (time.process_time() "
                                "at each backward, run_training_script.py --cpu-times): a cross-check that the "
                                "machine's other load hardly moves",
                  "memory": "peak RSS of the whole process (ru_maxrss from wait4), MiB",
                  "commands": commands,
                  "cpu_count": os.cpu_count(), "load_average_after": os.getloadavg()[0],
                  "platform": platform.platform(), "python": platform.python_version(),
                  "date": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "versions": {name: version(name) for name in ("torch", "diffusers", "transformers", "accelerate", "peft",
                                                       "datasets")},
        "targets": {"samples_per_s_ratio_editforge_vs_diffusers": ">= 1.1"},
        "samples_per_s_median": rate,
        "samples_per_cpu_s_median": cpu_rate,
        "ratio_samples_per_cpu_s_editforge_vs_diffusers": round(cpu_rate["editforge"] / cpu_rate["diffusers"], 3),
        "peak_rss_mb_median": peak,
        "ratio_samples_per_s_editforge_vs_diffusers": ratio,
        "ratio_samples_per_s_editforge_cached_vs_diffusers": round(rate["editforge_cached"] / rate["diffusers"], 3),
        "wall_s_median": wall,
        "target_met": {"editforge": ratio >= 1.1, "editforge_cached": rate["editforge_cached"] / rate["diffusers"] >= 1.1},
        "peak_rss_mb_difference_editforge_minus_diffusers": round(peak["editforge"] - peak["diffusers"], 1),
        "runs": runs,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
