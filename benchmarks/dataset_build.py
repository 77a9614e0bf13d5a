"""Benchmark: building a Hub dataset folder from 5k synthetic 256 px triplets.

Two routes, each measured in a fresh subprocess (peak RSS = the child's ``ru_maxrss``):

- ``editforge``: ``build_dataset("manifest", ...)``: every image decoded and validated, rows
  streamed into Parquet shards with images embedded, the dataset card written;
- ``from_list``: the plain route: ``Dataset.from_list(rows)`` with every image's bytes read into
  the rows (so the Parquet file is equally self-contained), then ``to_parquet``; no validation.

Each at 1k and 5k triplets. Writes ``benchmarks/results/dataset_build.json``::

    python benchmarks/dataset_build.py [--n 5000] [--small 1000] [--size 256] [--workdir DIR]

The synthetic world is generated once into ``--workdir`` (default: a folder under the system
temp dir) and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT = Path(__file__).resolve().parent / "results" / "dataset_build.json"
ROUTES = ("editforge", "from_list")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(route: str, manifest: Path, out: Path) -> dict:
    """One measured build (runs in its own process)."""
    import datasets  # noqa: F401 - imported before measuring, as both routes need it

    from editforge.dataset_builders.build import build_dataset
    from editforge.dataset_builders.features import EDIT_FEATURES

    after_import = rss_mb()
    start = time.perf_counter()
    if route == "editforge":
        report = build_dataset("manifest", manifest, out, rewards_from="ground_truth", progress=False)
        examples, files = report.num_examples, report.shards
    else:
        base = manifest.parent
        rows = []
        for line in manifest.read_text().splitlines():
            record = json.loads(line)

            def image(field):
                path = record.get(field)
                return None if path is None else {"bytes": (base / path).read_bytes(), "path": None}

            rows.append({
                "id": record["id"], "source_image": image("source_image"), "edited_image": image("edited_image"),
                "mask_image": image("mask_image"), "instruction": record["instruction"],
                "source_caption": record["source_caption"], "target_caption": record["target_caption"],
                "task": record["task"], "width": record["width"], "height": record["height"],
                "provenance": {"dataset": "synthetic", "original_id": record["id"]},
                "rewards": record["ground_truth"], "metrics": None, "viescore": None,
            })
        dataset = datasets.Dataset.from_list(rows, features=EDIT_FEATURES)
        out.mkdir(parents=True, exist_ok=True)
        files = [out / "train-00000-of-00001.parquet"]
        dataset.to_parquet(str(files[0]))
        examples = len(dataset)
    seconds = time.perf_counter() - start
    return {
        "route": route,
        "n": examples,
        "seconds": round(seconds, 2),
        "examples_per_s": round(examples / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_imports_mb": round(after_import, 1),
        "output_mb": round(sum(f.stat().st_size for f in files) / 1e6, 1),
    }


def prepare_world(workdir: Path, n: int, small: int, size: int) -> dict[int, Path]:
    from editforge.dataset_builders.synthetic import write_synthetic_dataset

    world = workdir / f"world-{n}-{size}px"
    manifest = world / "manifest.jsonl"
    if not manifest.is_file() or len(manifest.read_text().splitlines()) != n:
        print(f"generating {n} synthetic {size}x{size} triplets into {world} ...", flush=True)
        write_synthetic_dataset(world, n=n, seed=0, imperfect_rate=0.5, width=size, height=size)
    lines = manifest.read_text().splitlines()
    subset = world / f"manifest-{small}.jsonl"
    subset.write_text("\n".join(lines[:small]) + "\n")
    return {small: subset, n: manifest}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "editforge-bench-dataset-build")
    parser.add_argument("--child", nargs=3, metavar=("ROUTE", "MANIFEST", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        route, manifest, out = args.child
        print(json.dumps(child(route, Path(manifest), Path(out))))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    manifests = prepare_world(args.workdir, args.n, args.small, args.size)
    load_start = os.getloadavg()
    runs = []
    for n, manifest in sorted(manifests.items()):
        for route in ROUTES:
            out = args.workdir / f"out-{route}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
            result = subprocess.run(
                [sys.executable, __file__, "--child", route, str(manifest), str(out)],
                capture_output=True, text=True, env=env, check=True,
            )
            run = json.loads(result.stdout.strip().splitlines()[-1])
            print(json.dumps(run), flush=True)
            runs.append(run)
            shutil.rmtree(out, ignore_errors=True)

    def peak(route, n):
        return next(r["peak_rss_mb"] for r in runs if r["route"] == route and r["n"] == n)

    ratios = {route: round(peak(route, args.n) / peak(route, args.small), 3) for route in ROUTES}
    result = {
        "benchmark": "dataset_build",
        "what": f"{args.n} synthetic {args.size}x{args.size} edit triplets (source, edited, mask PNG) "
                "-> Parquet with images embedded; each build in a fresh subprocess",
        "routes": {
            "editforge": "build_dataset('manifest', ...): decode+validate every image, stream shards, write the card",
            "from_list": "Dataset.from_list(rows with image bytes) then to_parquet; no validation",
        },
        "runs": runs,
        "peak_rss_ratio_large_over_small": ratios,
        "editforge_peak_rss_within_20_percent": abs(ratios["editforge"] - 1) <= 0.2,
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
