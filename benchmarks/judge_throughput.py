"""Judge throughput: editforge's annotation engine beside a one-request-at-a-time client.

A loopback OpenAI-compatible server (a separate process, a fixed valid answer after ``--latency``
seconds) stands in for the judge. editforge annotates ``--items`` synthetic triplets at
``--concurrency`` through the whole real path (images read and encoded, cache keys, the cache,
the async client, validation, the output file), each repeat with a fresh cache. The baseline is
what the reference scripts do: the official synchronous client, one request after the other, on
``--sequential-items`` items (it is latency-bound, so a subset measures it as well).

The ceiling is ``concurrency / latency`` items/s (320 at 32 and 100 ms). Writes
``benchmarks/results/judge_throughput.json``.

    python benchmarks/judge_throughput.py
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

RESULT = Path(__file__).resolve().parent / "results" / "judge_throughput.json"


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "editforge.dataset_builders.annotation.server", "--responder", "constant",
         "--latency", str(latency)],
        stdout=subprocess.PIPE, text=True,
    )
    return process, process.stdout.readline().strip()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of another process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def sequential(world: Path, base_url: str, n: int) -> float:
    """Items/s of the official sync client, one request at a time (as the reference scripts do)."""
    import openai

    from editforge.dataset_builders.annotation import JudgeClient, prepare_image
    from editforge.dataset_builders.manifest import read_manifest, resolve_image

    builder = JudgeClient("multi-reward", model="gpt-4o", base_url=base_url, api_key="benchmark")
    client = openai.OpenAI(base_url=base_url, api_key="benchmark")
    records = list(read_manifest(world))[:n]
    start = time.perf_counter()
    for record in records:
        images = [prepare_image(resolve_image(record, f, world)) for f in ("source_image", "edited_image")]
        body = builder.request_body(record["instruction"], *images)
        completion = client.chat.completions.create(**body)
        builder.rewards_of(completion.model_dump())
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sequential-items", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    import openai

    from editforge.dataset_builders.annotation import annotate_manifest
    from editforge.dataset_builders.annotation.client import default_http_backend
    from editforge.dataset_builders.synthetic import write_synthetic_dataset

    os.environ["OPENAI_API_KEY"] = "benchmark"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_dataset(tmp / "world", n=args.items, seed=0, imperfect_rate=0.5, progress=False)
        server, base_url = start_server(args.latency)
        try:
            runs, client_cpu, server_cpu = [], [], []
            for repeat in range(args.repeats):
                server_before = process_cpu_seconds(server.pid)
                start, cpu_start = time.perf_counter(), time.process_time()
                report = annotate_manifest(tmp / "world", tmp / f"out{repeat}.jsonl", base_url=base_url,
                                           concurrency=args.concurrency, cache=tmp / f"cache{repeat}.sqlite",
                                           progress=False)
                elapsed = time.perf_counter() - start
                client_cpu.append(1000 * (time.process_time() - cpu_start) / args.items)
                if server_before is not None:
                    server_cpu.append(1000 * (process_cpu_seconds(server.pid) - server_before) / args.items)
                assert report.judged == args.items and report.failed == 0, report.summary()
                runs.append(args.items / elapsed)
                print(f"editforge run {repeat + 1}: {runs[-1]:.1f} items/s", flush=True)
            one_at_a_time = sequential(tmp / "world", base_url, args.sequential_items)
            print(f"one request at a time: {one_at_a_time:.2f} items/s", flush=True)
        finally:
            server.terminate()
            server.wait()
    load_after = os.getloadavg()

    ceiling = args.concurrency / args.latency
    ours = statistics.median(runs)
    result = {
        "benchmark": "judge_throughput",
        "items": args.items,
        "server_latency_s": args.latency,
        "concurrency": args.concurrency,
        "ceiling_items_per_s": ceiling,
        "editforge_items_per_s": round(ours, 2),
        "editforge_runs_items_per_s": [round(r, 2) for r in runs],
        "editforge_over_ceiling": round(ours / ceiling, 3),
        "target_over_ceiling": 0.8,
        "client_cpu_ms_per_item": round(statistics.median(client_cpu), 3),
        "server_cpu_ms_per_item": round(statistics.median(server_cpu), 3) if server_cpu else None,
        "sequential_items_per_s": round(one_at_a_time, 3),
        "sequential_items_measured": args.sequential_items,
        "speedup_over_sequential": round(ours / one_at_a_time, 1),
        "notes": (
            "editforge: annotate_manifest over a synthetic manifest (64x64 PNGs, multi-reward rubric), the whole call "
            "timed (manifest check, image reading, cache keys, SQLite cache, async openai client, validation, output "
            "file; the openai import excluded), fresh "
            "cache per run, median of the runs; CPU per item: this process (all its threads) and the server process. Server: loopback OpenAI-compatible server in its own process, "
            "constant valid answer after the latency. Sequential: the official sync openai client, one "
            f"chat.completions.create after the other, timed on the first {args.sequential_items} items."
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min_before": round(load_before[0], 2),
            "load_average_1min_after": round(load_after[0], 2),
            "python": platform.python_version(),
            "openai": openai.__version__,
            "http_backend": default_http_backend(),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
