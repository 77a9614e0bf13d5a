"""`editforge eval` killed with SIGKILL during generation and again during judging, then run again:
every (model, item, seed) is in items.jsonl exactly once, no edit is generated twice, and the judge
was asked again only for what was in flight at each kill."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from editforge.dataset_builders.annotation import LoopbackServer, OracleResponder

ITEMS, SEEDS = 12, (0, 1)
TOTAL = ITEMS * len(SEEDS)
CONCURRENCY = 2  # judge requests in flight at once (--concurrency)
IN_FLIGHT = CONCURRENCY


class CountingOracle(OracleResponder):
    """The oracle, counting the requests it answers per triplet (source and edit)."""

    def __init__(self):
        super().__init__()
        self.seen: Counter = Counter()
        self.lock = threading.Lock()

    def answer(self, rubric, instruction, image_urls):
        with self.lock:
            self.seen[hashlib.sha256("".join(image_urls).encode()).hexdigest()] += 1
        return super().answer(rubric, instruction, image_urls)


def _pngs(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} if (out / "images").is_dir() else {}


def _lines(out: Path) -> int:
    path = out / "items.jsonl"
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _wait(condition, process, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before the kill point"
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.02)


def test_kill_9_during_generation_and_judging_then_resume(tmp_path):
    from editforge.testing.tiny_models import tiny_instruct_pix2pix_pipeline

    tiny_instruct_pix2pix_pipeline().save_pretrained(tmp_path / "plain")
    out = tmp_path / "out"
    responder = CountingOracle()
    with LoopbackServer(responder, latency=0.2) as server:
        command = [sys.executable, "-m", "editforge", "eval", str(tmp_path / "plain"), "--suite", f"synthetic:n={ITEMS}",
                   "--out", str(out), "--seeds", ",".join(map(str, SEEDS)), "--model-args", "steps=12",
                   "--batch-size", "2", "--base-url", server.base_url, "--model", "editforge-oracle",
                   "--concurrency", str(CONCURRENCY), "--no-progress"]
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        env["OMP_NUM_THREADS"] = "1"

        def start():
            return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        # 1. killed during generation
        process = start()
        _wait(lambda: len(_pngs(out)) >= 4, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        first = _pngs(out)
        assert 4 <= len(first) < TOTAL, len(first)

        # 2. killed during judging: every edit written, the judge slow, some answers not in yet
        server.latency = 1.0
        process = start()
        _wait(lambda: len(_pngs(out)) == TOTAL, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        judged_at_kill = _lines(out)
        assert judged_at_kill < TOTAL, judged_at_kill
        second = _pngs(out)
        assert all(second[p] == stamp for p, stamp in first.items())  # nothing generated twice

        # 3. the same command finishes the run
        time.sleep(1.2)  # what was in flight at the kill is answered (to nobody) before the count
        server.latency = 0.0
        finished = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr[-2000:]

    assert _pngs(out) == second
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    keys = [(r["model"], r["item"], r["seed"]) for r in rows]
    assert len(keys) == TOTAL and len(set(keys)) == TOTAL
    assert all(r["metrics"] is not None for r in rows)
    # The judge saw each triplet once, except those in flight at each of the two kills.
    asked_twice = sum(count - 1 for count in responder.seen.values())
    print(f"edits before kill 1: {len(first)}; judged at kill 2: {judged_at_kill}; asked twice: {asked_twice}")
    assert len(responder.seen) <= TOTAL
    assert asked_twice <= 2 * IN_FLIGHT, responder.seen
    results = json.loads((out / "results.json").read_text())
    assert results["models"]["plain"]["subsets"]["all"]["all"]["judged"] == TOTAL
