"""Benchmark: UltraEdit's quality metrics, ``editforge metrics`` against UltraEdit's one-item loop.

The same small random CLIP and DINOv2 (built offline by ``editforge.testing.tiny_encoders``, saved
to folders and loaded with ``from_pretrained``) and the same canonical dataset of synthetic
triplets, each route in a fresh subprocess (peak RSS: the process's ``ru_maxrss``, and the largest
DataLoader worker's):

- ``editforge``: ``compute_metrics(...)`` as ``editforge metrics`` runs it: images decoded and
  preprocessed in DataLoader workers, CLIP images / texts and DINOv2 in batches, SSIM batched in
  torch, results committed per batch, the scored dataset written and published with its card;
- ``editforge_no_workers``: the same with ``num_workers=0`` (batching alone);
- ``editforge_2_processes``: the same under ``torchrun --nproc_per_node 2`` (what ``accelerate
  launch`` starts): each process scores its share, one thread and no workers each;
- ``one_at_a_time``: UltraEdit's way (its data_generation scripts): for each item, decode both
  images, ``encode_image`` source, ``encode_image`` edited, ``encode_text`` each caption (one model
  call each, as its ``ClipSimilarity.forward`` does), DINOv2 on each image, scikit-image's
  ``structural_similarity``; results collected in a list and written as JSON;
- ``one_at_a_time_2_threads``: that loop with ``OMP_NUM_THREADS=2`` (torch on both cores), so the
  speed-ups are against the loop's better setting.

``items_per_s`` counts the whole call after imports (transformers' lazily loaded model classes
included: seconds, the same for every route; then loading the dataset and the models, scoring,
writing the output); ``scoring_items_per_s`` the scoring loop alone (editforge: its DataLoader loop with
the per-batch commits; one_at_a_time: its per-item loop). Writes ``benchmarks/results/metrics_throughput.json``::

    python benchmarks/metrics_throughput.py [--n 512] [--size 64] [--batch-size 32] [--workers 2] [--threads 1]
                                            [--models tiny small] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT = Path(__file__).resolve().parent / "results" / "metrics_throughput.json"
ROUTES = ("editforge", "editforge_no_workers", "editforge_2_processes", "one_at_a_time", "one_at_a_time_2_threads")
BASELINES = ("one_at_a_time", "one_at_a_time_2_threads")
TWO_PROCESSES = "editforge_2_processes"  # torchrun --nproc_per_node 2 (as accelerate launch), 1 thread and no workers each
# "tiny": the test suite's encoders (per-call overhead dominates a forward on CPU); "small": 4x the
# width and tokens (the arithmetic starts to dominate, so batching has less to save on a CPU).
MODEL_SIZES = {
    "tiny": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2},
    "small": {"image_size": 64, "patch_size": 8, "hidden_size": 64, "num_layers": 4},
}


def one_at_a_time(dataset_dir: Path, clip_dir: Path, dino_dir: Path, out: Path) -> int:
    """UltraEdit's loop, with transformers' models and each model's own processor."""
    import io

    import numpy as np
    import PIL.Image
    import torch
    import torch.nn.functional as F
    from datasets import Image, load_dataset
    from skimage.metrics import structural_similarity
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor, CLIPModel

    clip, processor = CLIPModel.from_pretrained(clip_dir).eval(), AutoProcessor.from_pretrained(clip_dir)
    dino, dino_processor = AutoModel.from_pretrained(dino_dir).eval(), AutoImageProcessor.from_pretrained(dino_dir)
    data = load_dataset(str(dataset_dir), split="train")
    for column in ("source_image", "edited_image", "mask_image"):
        data = data.cast_column(column, Image(decode=False))

    def encode_image(image):
        pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        return F.normalize(clip.get_image_features(pixel_values=pixels).pooler_output, dim=-1)

    def encode_text(text):
        tokens = processor.tokenizer([text], truncation=True, max_length=77, return_tensors="pt")
        return F.normalize(clip.get_text_features(**tokens).pooler_output, dim=-1)

    def encode_dino(image):
        pixels = dino_processor(images=[image], return_tensors="pt")["pixel_values"]
        return F.normalize(dino(pixel_values=pixels).pooler_output, dim=-1)

    results = []
    loop_start = time.perf_counter()
    with torch.inference_mode():
        for row in data:
            source = PIL.Image.open(io.BytesIO(row["source_image"]["bytes"])).convert("RGB")
            edited = PIL.Image.open(io.BytesIO(row["edited_image"]["bytes"])).convert("RGB")
            i0, i1 = encode_image(source), encode_image(edited)
            t0, t1 = encode_text(row["source_caption"]), encode_text(row["target_caption"])
            d0, d1 = encode_dino(source), encode_dino(edited)
            results.append({
                "id": row["id"],
                "clip_sim_source": float(F.cosine_similarity(i0, t0)), "clip_sim_target": float(F.cosine_similarity(i1, t1)),
                "clip_sim_dir": float(F.cosine_similarity(i1 - i0, t1 - t0)), "clip_sim_image": float(F.cosine_similarity(i0, i1)),
                "dinov2_sim": float(F.cosine_similarity(d0, d1)),
                "ssim": float(structural_similarity(np.asarray(source) / 255.0, np.asarray(edited) / 255.0,
                                                    data_range=1, channel_axis=2)),
            })
    loop_seconds = time.perf_counter() - loop_start
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results))
    return len(results), loop_seconds


def child(route: str, dataset_dir: Path, clip_dir: Path, dino_dir: Path, out: Path, batch_size: int, workers: int) -> dict | None:
    # imported before measuring, as every route needs them (transformers' model classes load lazily:
    # importing them takes seconds, the same for every route, and is not the work being compared)
    import datasets  # noqa: F401
    import skimage.metrics  # noqa: F401
    import torch
    import transformers  # noqa: F401
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor, CLIPModel  # noqa: F401

    from editforge.dataset_builders.metrics import compute_metrics

    state = None
    if route == TWO_PROCESSES:
        from accelerate import PartialState

        state = PartialState(cpu=True)
        state.wait_for_everyone()  # both processes start the clock together
    start = time.perf_counter()
    scoring_rate = None
    if route in BASELINES:
        n, loop_seconds = one_at_a_time(dataset_dir, clip_dir, dino_dir, out)
        scoring_rate = round(n / loop_seconds, 1)
    else:
        report = compute_metrics(dataset_dir, out, clip_model=str(clip_dir), dinov2_model=str(dino_dir),
                                 batch_size=batch_size, num_workers=workers if route == "editforge" else 0, progress=False)
        n, loop_seconds = report.computed, report.seconds
    seconds = time.perf_counter() - start  # compute_metrics ends with every process at a barrier
    peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    worker_peak = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    if state is not None:  # the processes' items together, over the slower one's loop; memory summed
        parts = [None] * state.num_processes
        torch.distributed.all_gather_object(parts, {"n": n, "loop": loop_seconds, "peak": peak})
        if not state.is_main_process:
            return None
        n, loop_seconds = sum(p["n"] for p in parts), max(p["loop"] for p in parts)
        peak, worker_peak = round(sum(p["peak"] for p in parts), 1), 0.0
    if scoring_rate is None:
        scoring_rate = round(n / loop_seconds, 1)
    return {
        "route": route, "n": n, "seconds": round(seconds, 2), "items_per_s": round(n / seconds, 1),
        "scoring_items_per_s": scoring_rate, "peak_rss_mb": peak, "peak_rss_largest_worker_mb": worker_peak,
    }


def prepare(workdir: Path, n: int, size: int, models: str) -> tuple[Path, Path, Path]:
    from editforge.dataset_builders.build import build_dataset
    from editforge.dataset_builders.synthetic import write_synthetic_dataset
    from editforge.testing.tiny_encoders import save_tiny_clip, save_tiny_dinov2

    world, dataset = workdir / f"world-{n}-{size}px", workdir / f"dataset-{n}-{size}px"
    if not (dataset / "README.md").is_file():
        write_synthetic_dataset(world, n=n, seed=0, imperfect_rate=0.5, width=size, height=size, progress=False)
        build_dataset("manifest", world, dataset, progress=False)
    clip_dir, dino_dir = workdir / f"clip-{models}", workdir / f"dinov2-{models}"
    if not (clip_dir / "model.safetensors").is_file():
        save_tiny_clip(clip_dir, **MODEL_SIZES[models])
    if not (dino_dir / "model.safetensors").is_file():
        save_tiny_dinov2(dino_dir, **MODEL_SIZES[models])
    return dataset, clip_dir, dino_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every route (default 1)")
    parser.add_argument("--models", nargs="+", choices=list(MODEL_SIZES), default=list(MODEL_SIZES))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every route; medians reported")
    parser.add_argument("--loop-2-threads-rounds", type=int, default=0,
                        help="rounds that also run one_at_a_time_2_threads (slow where the cores are shared: "
                             "two threads per batch-1 call oversubscribe them)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "editforge-bench-metrics")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        route, *paths = args.child
        result = child(route, *map(Path, paths), args.batch_size, args.workers)
        if result is not None:
            print(json.dumps(result))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    runs = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    for round_index, models, route in [(i, m, r) for i in range(args.rounds) for m in args.models for r in ROUTES
                                       if r != "one_at_a_time_2_threads" or i < args.loop_2_threads_rounds]:
        dataset, clip_dir, dino_dir = prepare(args.workdir, args.n, args.size, models)
        out = args.workdir / f"out-{route}"
        shutil.rmtree(out, ignore_errors=True)
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if route == TWO_PROCESSES else []
        threads = "2" if route == "one_at_a_time_2_threads" else env["OMP_NUM_THREADS"]
        result = subprocess.run(
            [sys.executable, *launcher, __file__, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
             "--child", route, str(dataset), str(clip_dir), str(dino_dir), str(out)],
            capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": threads},
        )
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            return result.returncode
        run = {"round": round_index, "models": models, **json.loads(result.stdout.strip().splitlines()[-1])}
        print(json.dumps(run), flush=True)
        runs.append(run)
        shutil.rmtree(out, ignore_errors=True)

    def median(key, models, route):
        return statistics.median(r[key] for r in runs if r["models"] == models and r["route"] == route)

    routes = [r for r in ROUTES if any(x["route"] == r for x in runs)]
    rate = {(m, r): median("items_per_s", m, r) for m in args.models for r in routes}
    scoring = {(m, r): median("scoring_items_per_s", m, r) for m in args.models for r in routes}
    peak = {(m, r): max(x["peak_rss_mb"] for x in runs if x["models"] == m and x["route"] == r)
            for m in args.models for r in routes}
    fast = ("editforge", "editforge_no_workers", TWO_PROCESSES)
    # against the loop's better setting for each model size (1 or 2 threads): the speed-up a user sees
    best = {m: max((b for b in BASELINES if b in routes), key=lambda b: rate[m, b]) for m in args.models}
    result = {
        "benchmark": "metrics_throughput",
        "command": "python " + " ".join(sys.argv),
        "what": f"UltraEdit's six metrics on {args.n} synthetic {args.size}x{args.size} triplets, random CLIP and "
                f"DINOv2 of the sizes in 'models'; each route in a fresh subprocess, OMP_NUM_THREADS={args.threads} "
                f"(one_at_a_time_2_threads: 2), {args.rounds} interleaved rounds (one_at_a_time_2_threads: the first "
                f"{args.loop_2_threads_rounds}), medians (speedups are ratios of the medians)",
        "models": {m: MODEL_SIZES[m] for m in args.models},
        "routes": {
            "editforge": f"compute_metrics (editforge metrics): batch {args.batch_size}, {args.workers} DataLoader workers, "
                         "results committed per batch, scored dataset written with its card",
            "editforge_no_workers": f"the same with num_workers=0 (batch {args.batch_size})",
            TWO_PROCESSES: f"the same under torchrun --nproc_per_node 2 (what accelerate launch starts): the items "
                           f"shared out, 1 thread and no workers per process; peak RSS summed over both",
            "one_at_a_time": "UltraEdit's loop: one model call per image and per caption, skimage SSIM per item, JSON out",
            "one_at_a_time_2_threads": "the same loop with OMP_NUM_THREADS=2 (torch's intra-op threads on both cores)",
        },
        "timing": "items_per_s: the whole call after the imports (transformers' model classes included), i.e. "
                  "loading the dataset and the models, scoring, writing the output; scoring_items_per_s: the loop alone",
        "median_items_per_s": {m: {r: rate[m, r] for r in routes} for m in args.models},
        "median_scoring_items_per_s": {m: {r: scoring[m, r] for r in routes} for m in args.models},
        "peak_rss_mb": {m: {r: peak[m, r] for r in routes} for m in args.models},
        "runs": runs,
        "best_one_at_a_time": best,
        "speedup_over_best_one_at_a_time": {
            m: {r: round(rate[m, r] / rate[m, best[m]], 2) for r in fast} for m in args.models},
        "scoring_speedup_over_best_one_at_a_time": {
            m: {r: round(scoring[m, r] / scoring[m, best[m]], 2) for r in fast} for m in args.models},
        "target": "editforge metrics >= 4x the one-at-a-time loop's items/s",
        "machine": {
            "cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in load_start],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "platform": platform.platform(),
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
