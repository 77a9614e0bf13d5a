"""Overhead of editforge's StableDiffusion3InstructPix2PixPipeline against diffusers' community SD3
InstructPix2Pix pipeline: time, peak memory and output difference; writes JSON.

Both pipelines run on the same random weights (an SD3-shaped transformer at reduced width: patch size 2,
32 input channels = noisy + image latents, no mask; tiny CLIP text encoders, no T5; a 16-channel VAE), with
ours set to ``image_latents_normalization="scaled_shifted"``, the community pipeline's convention. The
community file (``examples/community/pipeline_stable_diffusion_3_instruct_pix2pix.py``) is loaded by path
from a diffusers checkout, as a module of the installed ``diffusers.pipelines.stable_diffusion_3`` package
(its relative imports name that package); nothing of it is copied here.

Each pipeline lives in its own worker process with one torch thread; the parent interleaves the calls
(ABBA order over rounds), so machine load falls on both alike. Time: wall seconds per call (median over
rounds). Peak memory: the peak of tensor memory during one untimed call, from torch.profiler's memory
timeline (exact allocator events); the worker's resident set size, sampled every millisecond, is
recorded too but is noisy on a shared machine.

    python benchmarks/sd3_pipeline_overhead.py --diffusers-checkout /tmp/diffusers
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "sd3_pipeline_overhead.json"
COMMUNITY_FILE = Path("examples/community/pipeline_stable_diffusion_3_instruct_pix2pix.py")
COMMUNITY_MODULE = "diffusers.pipelines.stable_diffusion_3.community_pipeline_stable_diffusion_3_instruct_pix2pix"
PROMPT = "make the red circle blue"


def transformer_config(args) -> dict:
    return dict(sample_size=args.size // 2, patch_size=2, in_channels=32, out_channels=16, num_layers=args.layers,
                attention_head_dim=args.head_dim, num_attention_heads=args.heads, joint_attention_dim=64,
                caption_projection_dim=args.head_dim * args.heads, pooled_projection_dim=64, pos_embed_max_size=96)


def build_components(args) -> dict:
    import torch
    from diffusers import SD3Transformer2DModel

    from editforge.testing.tiny_models import tiny_sd3_components

    components = tiny_sd3_components(seed=0, in_channels=32, latent_channels=16)
    torch.manual_seed(1)
    components["transformer"] = SD3Transformer2DModel(**transformer_config(args)).eval()
    return components


def load_community_class(checkout: Path):
    import diffusers.pipelines.stable_diffusion_3  # noqa: F401  (the package the file's relative imports name)

    spec = importlib.util.spec_from_file_location(COMMUNITY_MODULE, checkout / COMMUNITY_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[COMMUNITY_MODULE] = module
    spec.loader.exec_module(module)
    return module.StableDiffusion3InstructPix2PixPipeline


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def profiled_memory(call) -> dict:
    """Peak bytes of tensor memory during ``call()``, from torch's profiler memory timeline (CPU allocator
    events, exact and independent of machine load): the peak of everything tracked and the peak above
    what was held when the call began (weights and inputs)."""
    import json as json_module
    import tempfile as tempfile_module

    import numpy as np
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        call()
    with tempfile_module.TemporaryDirectory() as folder:
        path = Path(folder) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json_module.loads(path.read_text())
    totals = np.asarray(sizes, dtype=np.float64).sum(axis=1)
    return {"peak_bytes": float(totals.max()), "peak_above_start_bytes": float(totals.max() - totals[0])}


def worker(kind: str, args, connection) -> None:
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    components = build_components(args)
    if kind == "ours":
        from editforge.pipelines import StableDiffusion3InstructPix2PixPipeline

        pipe = StableDiffusion3InstructPix2PixPipeline(**components, image_latents_normalization="scaled_shifted")
    else:
        pipe = load_community_class(Path(args.diffusers_checkout))(**components)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
    weights = sum(float(p.detach().double().sum()) for p in pipe.transformer.parameters())

    # Without T5, stock SD3 (and so ours) pads the text context with max_sequence_length zero tokens, the
    # community file with tokenizer_max_length (77): ask ours for 77 so that both run the same context.
    extra = {"max_sequence_length": pipe.tokenizer_max_length} if kind == "ours" else {}

    def call():
        return pipe(PROMPT, image=image, height=args.size, width=args.size, num_inference_steps=args.steps,
                    guidance_scale=7.5, image_guidance_scale=1.5, output_type="np",
                    generator=torch.Generator().manual_seed(0), **extra).images

    connection.send({"ready": True, "weights_checksum": weights})
    while True:
        message = connection.recv()
        if message == "stop":
            return
        if message == "memory":
            connection.send(profiled_memory(call))
            continue
        peak, stop = [0], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], _rss())
                time.sleep(0.001)

        before = _rss()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        images = call()
        seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], _rss())
        reply = {"seconds": seconds, "peak_rss_delta": peak[0] - before}
        if message == "run+output":
            reply["images"] = images
        connection.send(reply)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers-checkout", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (each: one call of each pipeline)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (the VAE downsamples by 2)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if not (args.diffusers_checkout / COMMUNITY_FILE).is_file():
        print(f"{args.diffusers_checkout} is not a diffusers checkout: no {COMMUNITY_FILE}", file=sys.stderr)
        return 2

    context = multiprocessing.get_context("spawn")
    workers = {}
    for kind in ("ours", "community"):
        parent, child = context.Pipe()
        process = context.Process(target=worker, args=(kind, args, child), daemon=True)
        process.start()
        workers[kind] = (process, parent)
    checksums = {kind: connection.recv()["weights_checksum"] for kind, (_, connection) in workers.items()}
    if checksums["ours"] != checksums["community"]:
        raise SystemExit(f"the two workers built different weights: {checksums}")

    first, images = {}, {}
    for kind, (_, connection) in workers.items():  # the first call after loading, one worker at a time
        connection.send("run+output")
        reply = connection.recv()
        first[kind] = reply
        images[kind] = reply.pop("images")
    memory = {}
    for kind, (_, connection) in workers.items():
        connection.send("memory")
        memory[kind] = connection.recv()
    runs = {"ours": [], "community": []}
    for round_index in range(args.rounds):
        order = ["ours", "community"] if round_index % 2 == 0 else ["community", "ours"]
        for kind in order:
            workers[kind][1].send("run")
            runs[kind].append(workers[kind][1].recv())
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{k} {runs[k][-1]['seconds']:.3f}s" for k in ("ours", "community")), file=sys.stderr, flush=True)
    for process, connection in workers.values():
        connection.send("stop")
        process.join(timeout=30)

    import numpy as np
    import torch

    def summary(kind):
        seconds = [r["seconds"] for r in runs[kind]]
        peaks = [r["peak_rss_delta"] for r in runs[kind]]
        return {
            "seconds_median": statistics.median(seconds),
            "seconds_min": min(seconds),
            "seconds_all": [round(s, 4) for s in seconds],
            "peak_rss_delta_mib_median": statistics.median(peaks) / 2**20,
            "peak_rss_delta_mib_all": [round(p / 2**20, 2) for p in peaks],
            "first_call_seconds": first[kind]["seconds"],
            "first_call_peak_rss_delta_mib": first[kind]["peak_rss_delta"] / 2**20,
            "profiled_peak_tensor_mib": memory[kind]["peak_bytes"] / 2**20,
            "profiled_peak_tensor_above_start_mib": memory[kind]["peak_above_start_bytes"] / 2**20,
        }

    ours, community = summary("ours"), summary("community")
    ratio = lambda key: ours[key] / community[key] if community[key] else None  # noqa: E731
    max_abs_diff = float(np.abs(images["ours"] - images["community"]).max())
    time_ratio = ratio("seconds_median")
    memory_ratio = ratio("profiled_peak_tensor_mib")
    checkout = args.diffusers_checkout.resolve()
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "benchmark": "sd3_pipeline_overhead",
        "what": "editforge StableDiffusion3InstructPix2PixPipeline (no mask, 32 channels, scaled_shifted) vs diffusers'"
                " community SD3 InstructPix2Pix pipeline, same random weights, interleaved calls",
        "command": "python benchmarks/sd3_pipeline_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "community_pipeline": {"checkout": str(checkout), "commit": commit or None, "file": str(COMMUNITY_FILE)},
        "settings": {"rounds": args.rounds, "num_inference_steps": args.steps, "image": f"{args.size}x{args.size}",
                     "guidance_scale": 7.5, "image_guidance_scale": 1.5, "torch_threads": 1,
                     "transformer": transformer_config(args),
                     "transformer_parameters": None,
                     "text_encoders": "two tiny CLIP (hidden 32), no T5",
                     "max_sequence_length_ours": "77: without T5, stock SD3 (and ours) pad the context with"
                     " max_sequence_length (default 256) zero tokens, the community file with tokenizer_max_length (77);"
                     " set equal so that both compute the same thing", "vae": "tiny AutoencoderKL, 16 latent channels, 2x"},
        "memory_method": "peak tensor memory of one (untimed) call from torch.profiler's memory timeline"
                         " (profile_memory=True, export_memory_timeline(device='cpu')): exact allocator events, the"
                         " compared figure. Also recorded, and noisy on a shared machine: worker RSS sampled every"
                         " 1 ms during a call minus RSS just before it (first call and later ones)",
        "ours": ours,
        "community": community,
        "time_ratio_median": time_ratio,
        "peak_memory_ratio": memory_ratio,
        "peak_memory_above_start_ratio": ratio("profiled_peak_tensor_above_start_mib"),
        "rss_peak_ratio_first_call": ratio("first_call_peak_rss_delta_mib"),
        "rss_peak_ratio_median_later_calls": ratio("peak_rss_delta_mib_median"),
        "target_ratio": 1.02,
        "meets_target": bool(time_ratio is not None and time_ratio <= 1.02 and memory_ratio is not None and memory_ratio <= 1.02),
        "output_max_abs_diff": max_abs_diff,
        "versions": {name: importlib.metadata.version(name) for name in ("diffusers", "transformers", "torch")},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), python {platform.python_version()}",
    }
    from diffusers import SD3Transformer2DModel

    result["settings"]["transformer_parameters"] = sum(
        p.numel() for p in SD3Transformer2DModel(**transformer_config(args)).parameters())
    del torch
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("time_ratio_median", "peak_memory_ratio", "peak_memory_above_start_ratio",
                                             "rss_peak_ratio_first_call", "output_max_abs_diff", "meets_target")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
