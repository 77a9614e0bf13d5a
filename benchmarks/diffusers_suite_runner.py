"""Shared machinery of the scripts that run diffusers' own pipeline tests against an editforge
pipeline (``diffusers_pipeline_tests.py``, ``diffusers_sd3_pipeline_tests.py``): run an adapter
suite under ``tests/`` once per diffusers checkout in a fresh pytest process, read its JUnit report
into per-test outcomes (a skip whose reason starts with ``inapplicable: `` is marked so), and write
the JSON result. Imported by those scripts (they run from this folder); not a benchmark itself.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT_VARIABLE = "EDITFORGE_DIFFUSERS_CHECKOUT"
INAPPLICABLE_PREFIX = "inapplicable: "
# Test dependencies of diffusers that its pipeline test files import (module: pip name); scipy and
# torchsde for the schedulers of the Karras-scheduler tests (LMSDiscrete, DPMSolverSDE).
TEST_DEPENDENCIES = {"parameterized": "parameterized", "requests_mock": "requests-mock", "scipy": "scipy", "torchsde": "torchsde"}
VERSIONS = ("diffusers", "transformers", "torch", "accelerate", "peft", "pytest", *TEST_DEPENDENCIES.values())


@dataclass
class AdapterSuite:
    """One adapter of diffusers' tests: its pytest file here, the diffusers test file it imports,
    how to tell a test's origin and style, and per-test notes."""

    suite: str                                   # e.g. tests/test_diffusers_pipeline_suite.py
    diffusers_tests: Path                        # relative to a checkout
    origin: Callable[[str], str] = lambda name: "diffusers"
    style: Callable[[Path], str] = lambda checkout: "unknown"
    notes: dict[str, str] = field(default_factory=dict)


def _git(checkout: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def accelerator() -> str | None:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "xpu" if hasattr(torch, "xpu") and torch.xpu.is_available() else None


def parse_junit(path: Path, adapter: AdapterSuite) -> list[dict]:
    tests = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        entry = {"class": case.get("classname", "").rsplit(".", 1)[-1], "name": name, "origin": adapter.origin(name)}
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failure is not None or error is not None:
            element = failure if failure is not None else error
            entry["outcome"] = "failed" if failure is not None else "error"
            entry["reason"] = (element.get("message") or "").strip()[:500]
        elif skipped is not None:
            reason = (skipped.get("message") or "").strip()
            entry["outcome"] = "skipped"
            if reason.startswith(INAPPLICABLE_PREFIX):
                entry["inapplicable"] = True
                reason = reason[len(INAPPLICABLE_PREFIX):]
            entry["reason"] = reason
        else:
            entry["outcome"] = "passed"
        if name in adapter.notes:
            entry["note"] = adapter.notes[name]
        tests.append(entry)
    return tests


def run_suite(checkout: Path, adapter: AdapterSuite, timeout: int) -> dict:
    checkout = checkout.resolve()
    if not (checkout / adapter.diffusers_tests).is_file():
        raise SystemExit(f"{checkout} is not a diffusers checkout: no {adapter.diffusers_tests}")
    with tempfile.TemporaryDirectory(prefix="editforge-diffusers-tests-") as folder:
        junit = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", adapter.suite, "-q", "-rfEs", f"--junitxml={junit}",
                   # diffusers registers its markers in its own conftest, which is not loaded here
                   "-W", "ignore::pytest.PytestUnknownMarkWarning"]
        env = {**os.environ, CHECKOUT_VARIABLE: str(checkout)}
        started = time.perf_counter()
        process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        seconds = time.perf_counter() - started
        if not junit.is_file():
            raise SystemExit(f"pytest wrote no report (exit {process.returncode}):\n{process.stdout[-4000:]}{process.stderr[-4000:]}")
        tests = parse_junit(junit, adapter)
    if not tests or all(t["outcome"] == "skipped" and "checkout" in t.get("reason", "") for t in tests):
        raise SystemExit(f"no test ran for {checkout}:\n{process.stdout[-4000:]}")
    counts = {outcome: sum(t["outcome"] == outcome for t in tests) for outcome in ("passed", "failed", "error", "skipped")}
    return {
        "checkout": str(checkout),
        "commit": _git(checkout, "rev-parse", "HEAD"),
        "describe": _git(checkout, "describe", "--tags", "--always"),
        "subject": _git(checkout, "log", "-1", "--format=%s (%cs)"),
        "test_file": str(adapter.diffusers_tests),
        "style": adapter.style(checkout),
        "command": f"{CHECKOUT_VARIABLE}={checkout} python {' '.join(command[1:])}".replace(f" --junitxml={junit}", ""),
        "pytest_exit_status": process.returncode,
        "seconds": round(seconds, 1),
        "counts": counts,
        "inapplicable": {t["name"]: t["reason"] for t in tests if t.get("inapplicable")},
        "skipped_for_the_environment": {
            f"{t['class']}::{t['name']}": t["reason"] for t in tests if t["outcome"] == "skipped" and not t.get("inapplicable")
        },
        "not_passed": {f"{t['class']}::{t['name']}": t["reason"] for t in tests if t["outcome"] in ("failed", "error")},
        "tests": tests,
    }


def main(adapter: AdapterSuite, description: str, default_out: Path, describe: Callable[[], dict], argv=None) -> int:
    """Parse ``--diffusers-checkout PATH`` (repeatable), ``--out``, ``--timeout``; run the adapter on
    every checkout; write ``{benchmark fields from describe(), versions, machine, totals, suites}``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--diffusers-checkout", type=Path, action="append", required=True, metavar="PATH",
                        help="a diffusers source tree (repeat for several, e.g. the pytest-style and the unittest-style tests)")
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per suite")
    args = parser.parse_args(argv)
    missing = [pip for module, pip in TEST_DEPENDENCIES.items() if importlib.util.find_spec(module) is None]
    if missing:
        print(f"diffusers' test dependencies missing: pip install {' '.join(missing)}", file=sys.stderr)
        return 2
    suites = []
    for checkout in args.diffusers_checkout:
        print(f"running {adapter.diffusers_tests} from {checkout} ...", file=sys.stderr, flush=True)
        suite = run_suite(checkout, adapter, args.timeout)
        print(f"  {suite['style'].split(' ')[0]} style, {suite['describe']}: {suite['counts']}", file=sys.stderr)
        suites.append(suite)
    totals = {key: sum(s["counts"][key] for s in suites) for key in ("passed", "failed", "error", "skipped")}
    result = {
        **describe(),
        "suite": adapter.suite,
        "versions": {name: version(name) for name in VERSIONS},
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, accelerator: {accelerator() or 'none'}",
        "totals": totals,
        "suites": suites,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"totals": totals, "out": str(args.out)}, indent=2))
    return 1 if totals["failed"] or totals["error"] else 0
