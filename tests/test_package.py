"""The package installs, imports and starts fast; CI runs the README's test command."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ["editforge.pipelines", "editforge.dataset_builders", "editforge.training", "editforge.model_cards"]


def test_mapped_packages_import_from_their_folders():
    import importlib

    for name in MAPPED:
        module = importlib.import_module(name)
        folder = name.split(".", 1)[1]
        assert Path(module.__file__).parent == ROOT / folder


def test_help_is_fast_and_does_not_import_the_heavy_stack():
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "editforge", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "synth" in result.stdout
    assert elapsed < 2.0, f"editforge --help took {elapsed:.2f}s"
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, editforge.cli as c; c.build_parser(); "
         "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'datasets') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "[]"


def test_plain_install_gives_working_imports(tmp_path):
    """`pip install .` (not editable) ships every mapped package with its files."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(ROOT)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    code = (
        "import editforge, editforge.cli, editforge.dataset_builders.synthetic as s, editforge.testing.fake_hub; "
        + "; ".join(f"import {m}" for m in MAPPED)
        + "; print(editforge.__file__); print(s.generate_triplet(0, 0).instruction)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(target))


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    command = [line for line in ci.splitlines() if "pytest" in line and not line.startswith("#")]
    assert len(command) == 1
    assert command[0].strip() in readme
    assert "torch==2.13.0" in ci and re.search(r'pip install .*-e "\.\[test\]"', ci)
