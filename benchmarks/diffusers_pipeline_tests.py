"""diffusers' own pipeline tests against RewardConditionedPix2PixPipeline: per-test result as JSON.

Runs ``tests/test_diffusers_pipeline_suite.py`` (diffusers' InstructPix2Pix fast-test classes, with their
``PipelineTesterMixin`` and the other mixins, imported by path from a diffusers checkout; our pipeline
class in place of the stock one, a ``reward_conditioner`` added to the dummy components) once per
checkout, in a fresh pytest process each, and writes ``benchmarks/results/diffusers_pipeline_tests.json``:
passed / failed / skipped per test, the reason of every skip, and which skipped tests are
inapplicable (and why). The installed diffusers is the one under test; a checkout gives only the tests.

Two generations of diffusers' InstructPix2Pix tests are understood; run both::

    # a diffusers source tree (any clone; no install needed) and a work tree of the last commit
    # before diffusers moved these tests to pytest style (#14339, a14d630211)
    git clone https://github.com/huggingface/diffusers /tmp/diffusers
    git -C /tmp/diffusers worktree add --detach /tmp/diffusers-legacy a14d630211^
    pip install parameterized requests-mock scipy torchsde   # diffusers' test dependencies these files use
    python benchmarks/diffusers_pipeline_tests.py \\
        --diffusers-checkout /tmp/diffusers --diffusers-checkout /tmp/diffusers-legacy

Exit status 1 when any test failed or errored.
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
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "diffusers_pipeline_tests.json"
SUITE = "tests/test_diffusers_pipeline_suite.py"
CHECKOUT_VARIABLE = "EDITFORGE_DIFFUSERS_CHECKOUT"
IP2P_TESTS = Path("tests/pipelines/stable_diffusion/test_stable_diffusion_instruction_pix2pix.py")
# Test dependencies of diffusers that the InstructPix2Pix test files import (module: pip name).
# scipy and torchsde: schedulers of the Karras-scheduler test (LMSDiscrete, DPMSolverSDE).
TEST_DEPENDENCIES = {"parameterized": "parameterized", "requests_mock": "requests-mock", "scipy": "scipy", "torchsde": "torchsde"}
VERSIONS = ("diffusers", "transformers", "torch", "accelerate", "peft", "pytest", *TEST_DEPENDENCIES.values())
INAPPLICABLE_PREFIX = "inapplicable: "
ADAPTED = {
    "test_encode_prompt_works_in_isolation": (
        "checks nothing here: stock InstructPix2Pix (and so ours) has no `encode_prompt`, and then diffusers'"
        " unittest-style mixin returns early (a pass) while the pytest-style one skips. Should it run, the"
        " precomputed reward_feedback_embeds join its inputs (a pipeline without a text encoder cannot encode"
        " the reward feedback); tests/test_reward_pipeline.py covers that case"
    ),
}


def _git(checkout: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _style(checkout: Path) -> str:
    text = (checkout / IP2P_TESTS).read_text(encoding="utf-8")
    if "StableDiffusionInstructPix2PixPipelineTesterConfig" in text:
        return "pytest (tests/pipelines/testing_utils: PipelineTesterMixin, MemoryTesterMixin)"
    if "StableDiffusionInstructPix2PixPipelineFastTests" in text:
        return (
            "unittest (tests/pipelines/test_pipelines_common.py: PipelineTesterMixin, PipelineLatentTesterMixin,"
            " PipelineKarrasSchedulerTesterMixin)"
        )
    return "unknown"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _hub_tokenizer_cached() -> bool:
    from huggingface_hub import try_to_load_from_cache

    return all(
        isinstance(try_to_load_from_cache("hf-internal-testing/tiny-random-clip", name), str)
        for name in ("vocab.json", "merges.txt")
    )


def _origin(name: str) -> str:
    if name.endswith("_equals_stock"):
        return "editforge: stands in for the inapplicable diffusers test " + name.removesuffix("_equals_stock")
    return "diffusers"


def parse_junit(path: Path) -> list[dict]:
    tests = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        entry = {"class": case.get("classname", "").rsplit(".", 1)[-1], "name": name, "origin": _origin(name)}
        failure = case.find("failure")
        error = case.find("error")
        skipped = case.find("skipped")
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
        if name in ADAPTED:
            entry["note"] = ADAPTED[name]
        tests.append(entry)
    return tests


def run_suite(checkout: Path, timeout: int) -> dict:
    checkout = checkout.resolve()
    if not (checkout / IP2P_TESTS).is_file():
        raise SystemExit(f"{checkout} is not a diffusers checkout: no {IP2P_TESTS}")
    with tempfile.TemporaryDirectory(prefix="editforge-diffusers-tests-") as folder:
        junit = Path(folder) / "junit.xml"
        command = [
            sys.executable, "-m", "pytest", SUITE, "-q", "-rfEs", f"--junitxml={junit}",
            # diffusers registers its markers in its own conftest, which is not loaded here
            "-W", "ignore::pytest.PytestUnknownMarkWarning",
        ]
        env = {**os.environ, CHECKOUT_VARIABLE: str(checkout)}
        started = time.perf_counter()
        process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        seconds = time.perf_counter() - started
        if not junit.is_file():
            raise SystemExit(f"pytest wrote no report (exit {process.returncode}):\n{process.stdout[-4000:]}{process.stderr[-4000:]}")
        tests = parse_junit(junit)
    if not tests or all(t["outcome"] == "skipped" and "checkout" in t.get("reason", "") for t in tests):
        raise SystemExit(f"no test ran for {checkout}:\n{process.stdout[-4000:]}")
    counts = {outcome: sum(t["outcome"] == outcome for t in tests) for outcome in ("passed", "failed", "error", "skipped")}
    return {
        "checkout": str(checkout),
        "commit": _git(checkout, "rev-parse", "HEAD"),
        "describe": _git(checkout, "describe", "--tags", "--always"),
        "subject": _git(checkout, "log", "-1", "--format=%s (%cs)"),
        "test_file": str(IP2P_TESTS),
        "style": _style(checkout),
        "command": f"{CHECKOUT_VARIABLE}={checkout} python {' '.join(command[1:])}".replace(f" --junitxml={junit}", ""),
        "pytest_exit_status": process.returncode,
        "seconds": round(seconds, 1),
        "counts": counts,
        "inapplicable": {t["name"]: t["reason"] for t in tests if t.get("inapplicable")},
        "skipped_for_the_environment": {
            f"{t['class']}::{t['name']}": t["reason"] for t in tests if t["outcome"] == "skipped" and not t.get("inapplicable")
        },
        "not_passed": {
            f"{t['class']}::{t['name']}": t["reason"] for t in tests if t["outcome"] in ("failed", "error")
        },
        "tests": tests,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--diffusers-checkout", type=Path, action="append", required=True, metavar="PATH",
        help="a diffusers source tree (repeat for several, e.g. the pytest-style and the unittest-style tests)",
    )
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per suite")
    args = parser.parse_args(argv)

    missing = [pip for module, pip in TEST_DEPENDENCIES.items() if importlib.util.find_spec(module) is None]
    if missing:
        print(f"diffusers' test dependencies missing: pip install {' '.join(missing)}", file=sys.stderr)
        return 2

    suites = []
    for checkout in args.diffusers_checkout:
        print(f"running diffusers' InstructPix2Pix tests from {checkout} ...", file=sys.stderr, flush=True)
        suite = run_suite(checkout, args.timeout)
        print(f"  {suite['style'].split(' ')[0]} style, {suite['describe']}: {suite['counts']}", file=sys.stderr)
        suites.append(suite)

    totals = {key: sum(s["counts"][key] for s in suites) for key in ("passed", "failed", "error", "skipped")}
    result = {
        "benchmark": "diffusers_pipeline_tests",
        "what": "diffusers' own InstructPix2Pix pipeline tests run against editforge's RewardConditionedPix2PixPipeline",
        "pipeline": "editforge.pipelines.RewardConditionedPix2PixPipeline",
        "suite": SUITE,
        "dummy_components": "diffusers' InstructPix2Pix dummy components + RewardConditioner.from_unet(unet,"
        " feedback_dim=text_encoder hidden size) (untrained: zero-initialised outputs)",
        "tokenizer": "hf-internal-testing/tiny-random-clip (local Hub cache)" if _hub_tokenizer_cached() else
        "a local CLIP tokenizer (hf-internal-testing/tiny-random-clip is not in the local Hub cache)",
        "adaptations": [
            "pipeline_class is RewardConditionedPix2PixPipeline; get_dummy_components adds reward_conditioner",
            "unittest-style class: tests that build StableDiffusionInstructPix2PixPipeline by name get ours",
            *ADAPTED.values(),
        ],
        "versions": {name: _version(name) for name in VERSIONS},
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, accelerator: {_accelerator() or 'none'}",
        "totals": totals,
        "suites": suites,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"totals": totals, "out": str(args.out)}, indent=2))
    return 1 if totals["failed"] or totals["error"] else 0


def _accelerator() -> str | None:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "xpu" if hasattr(torch, "xpu") and torch.xpu.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
