"""diffusers' own SD3 pipeline tests against StableDiffusion3InstructPix2PixPipeline: per-test result as JSON.

Runs ``tests/test_diffusers_sd3_suite.py`` (diffusers' ``StableDiffusion3PipelineFastTests`` with its
``PipelineTesterMixin``, imported by path from a diffusers checkout; our class in place of the stock one,
a widened dummy transformer, an ``image`` in the call) once per checkout, each in a fresh pytest process,
and writes ``benchmarks/results/diffusers_sd3_pipeline_tests.json``: passed / failed / skipped per test,
the reason of every skip, and which skipped tests are inapplicable (and why). The installed diffusers is
the one under test; a checkout gives only the tests.

    git clone https://github.com/huggingface/diffusers /tmp/diffusers
    pip install parameterized requests-mock scipy torchsde   # diffusers' test dependencies
    python benchmarks/diffusers_sd3_pipeline_tests.py --diffusers-checkout /tmp/diffusers

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
RESULT = ROOT / "benchmarks" / "results" / "diffusers_sd3_pipeline_tests.json"
SUITE = "tests/test_diffusers_sd3_suite.py"
CHECKOUT_VARIABLE = "EDITFORGE_DIFFUSERS_CHECKOUT"
SD3_TESTS = Path("tests/pipelines/stable_diffusion_3/test_pipeline_stable_diffusion_3.py")
TEST_DEPENDENCIES = {"parameterized": "parameterized", "requests_mock": "requests-mock", "scipy": "scipy", "torchsde": "torchsde"}
VERSIONS = ("diffusers", "transformers", "torch", "accelerate", "peft", "pytest", *TEST_DEPENDENCIES.values())
INAPPLICABLE_PREFIX = "inapplicable: "
EDITFORGE_TESTS = {"test_inference_equals_stock": "editforge: stands in for the inapplicable diffusers test test_inference"}


def _git(checkout: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_junit(path: Path) -> list[dict]:
    tests = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        entry = {"class": case.get("classname", "").rsplit(".", 1)[-1], "name": name,
                 "origin": EDITFORGE_TESTS.get(name, "diffusers")}
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
        tests.append(entry)
    return tests


def run_suite(checkout: Path, timeout: int) -> dict:
    checkout = checkout.resolve()
    if not (checkout / SD3_TESTS).is_file():
        raise SystemExit(f"{checkout} is not a diffusers checkout: no {SD3_TESTS}")
    with tempfile.TemporaryDirectory(prefix="editforge-diffusers-sd3-tests-") as folder:
        junit = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", SUITE, "-q", "-rfEs", f"--junitxml={junit}",
                   "-W", "ignore::pytest.PytestUnknownMarkWarning"]
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
        "test_file": str(SD3_TESTS),
        "style": "unittest (tests/pipelines/test_pipelines_common.py: PipelineTesterMixin)",
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


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers-checkout", type=Path, action="append", required=True, metavar="PATH")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per suite")
    args = parser.parse_args(argv)
    missing = [pip for module, pip in TEST_DEPENDENCIES.items() if importlib.util.find_spec(module) is None]
    if missing:
        print(f"diffusers' test dependencies missing: pip install {' '.join(missing)}", file=sys.stderr)
        return 2
    suites = []
    for checkout in args.diffusers_checkout:
        print(f"running diffusers' SD3 pipeline tests from {checkout} ...", file=sys.stderr, flush=True)
        suite = run_suite(checkout, args.timeout)
        print(f"  {suite['describe']}: {suite['counts']}", file=sys.stderr)
        suites.append(suite)
    totals = {key: sum(s["counts"][key] for s in suites) for key in ("passed", "failed", "error", "skipped")}
    import torch

    result = {
        "benchmark": "diffusers_sd3_pipeline_tests",
        "what": "diffusers' own SD3 pipeline tests (StableDiffusion3PipelineFastTests + PipelineTesterMixin) run"
                " against editforge's StableDiffusion3InstructPix2PixPipeline",
        "pipeline": "editforge.pipelines.StableDiffusion3InstructPix2PixPipeline",
        "suite": SUITE,
        "classes": {
            "TestSD3Pix2PixWithDiffusersSD3Tests": "dummy transformer widened 4 -> 8 input channels (image, no mask)",
            "TestSD3Pix2PixMaskWithDiffusersSD3Tests": "dummy transformer widened 4 -> 12 (image + mask; the call"
                                                        " leaves mask_image out: free-form)",
        },
        "adaptations": [
            "pipeline_class is StableDiffusion3InstructPix2PixPipeline; the dummy transformer's patch embedding is"
            " widened with widen_patch_embedding (new weights zero)",
            "get_dummy_inputs adds image = a seeded 32x32 tensor in 0..1 (as diffusers' SD3 img2img tests);"
            " batch_params gain image, params gain image and image_guidance_scale",
            "offline: a local CLIP tokenizer replaces hf-internal-testing/tiny-random-clip and the T5 encoder is"
            " left out (text_encoder_3=None, which SD3 allows); hf-internal-testing/tiny-random-t5 cannot be fetched",
        ],
        "versions": {name: _version(name) for name in VERSIONS},
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, accelerator: "
                   f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
        "totals": totals,
        "suites": suites,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"totals": totals, "out": str(args.out)}, indent=2))
    return 1 if totals["failed"] or totals["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
