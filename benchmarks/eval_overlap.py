"""Does `editforge eval` judge while it generates? Wall time of one run against generation and judging
run one after the other.

The judge is the loopback OpenAI-compatible server with a constant answer and added latency (a
remote LVLM's round trip), chosen so that judging alone takes about as long as generating alone.
Three runs of the harness, each in a fresh folder with a fresh answer cache:

1. generation alone: the same run with a judge of zero latency;
2. judging alone: the images of run 1 judged again (items.jsonl and the cache removed), at the latency;
3. the run: generation and judging together, at the latency.

Target: wall(3) <= 0.6 x (wall(1) + wall(2)). Writes benchmarks/results/eval_overlap.json.

    OMP_NUM_THREADS=1 python benchmarks/eval_overlap.py --items 24 --steps 20
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--latency", type=float, default=None,
                        help="judge latency in seconds (default: chosen so judging alone takes as long as generation)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_overlap.json"))
    args = parser.parse_args(argv)

    import torch
    from editforge.dataset_builders.annotation import ConstantResponder, LoopbackServer
    from editforge.evaluation import evaluate

    from editforge.testing.tiny_models import tiny_instruct_pix2pix_pipeline

    root = Path(tempfile.mkdtemp(prefix="eval_overlap_"))
    try:
        tiny_instruct_pix2pix_pipeline().save_pretrained(root / "plain")
        suite = f"synthetic:n={args.items},sizes=32x32"
        common = dict(seeds=[0], model_args=[f"steps={args.steps}"], batch_size=args.batch_size,
                      concurrency=args.concurrency, progress=False, judge_model="constant", grid_rows=2)
        with LoopbackServer(ConstantResponder(), latency=0.0, model="constant") as server:
            evaluate([f"warmup={root / 'plain'}"], "synthetic:n=2,sizes=32x32", root / "warmup",
                     base_url=server.base_url, **common)

            def timed(out: Path) -> float:
                clock = time.perf_counter()
                evaluate([f"plain={root / 'plain'}"], suite, out, base_url=server.base_url, **common)
                return time.perf_counter() - clock

            generation_alone = timed(root / "generate")
            # `concurrency` requests in flight: judging alone then takes about as long as generating
            latency = args.latency if args.latency is not None else generation_alone * args.concurrency / args.items
            server.latency = latency
            (root / "generate" / "items.jsonl").unlink()
            shutil.rmtree(root / "generate" / "cache")
            judging_alone = timed(root / "generate")
            before = server.stats["chat_answered"]
            together = timed(root / "together")
            judged_requests = server.stats["chat_answered"] - before
        ratio = together / (generation_alone + judging_alone)
        result = {
            "benchmark": "eval_overlap",
            "what": "wall time of an eval run (generation and judging together) / (generation alone + judging alone)",
            "command": f"OMP_NUM_THREADS=1 python benchmarks/eval_overlap.py --items {args.items} --steps {args.steps}",
            "items": args.items, "steps": args.steps, "batch_size": args.batch_size, "concurrency": args.concurrency,
            "judge_latency_s": round(latency, 3),
            "generation_alone_s": round(generation_alone, 2),
            "judging_alone_s": round(judging_alone, 2),
            "sequential_sum_s": round(generation_alone + judging_alone, 2),
            "together_s": round(together, 2),
            "ratio": round(ratio, 3),
            "target": 0.6,
            "meets_target": ratio <= 0.6,
            "judge_requests_in_the_run": judged_requests,
            "machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()},
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
