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
        + "; from editforge.dataset_builders.prompts import load_taxonomy; print(load_taxonomy('instructengine').shape)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(target))
    assert out.stdout.splitlines()[2] == "(20, 20)"  # package data: the built-in taxonomy


def _quick_start_commands() -> list[str]:
    """The commands in the README's "## Quick start" code blocks."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _recipe(makefile: str, target: str) -> list[str]:
    """The recipe lines of ``target`` in a Makefile (tab-indented lines after ``target:``)."""
    lines = makefile.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{re.escape(target)}\s*:(?!=)", line))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_ci_runs_the_readme_test_command():
    """The quick start is two commands that set themselves up; CI runs the same test command.

    Before the Makefile, CI installed and ran ``python -m pytest -q`` itself: that command and the
    pinned install now live in the Makefile's ``test`` target, which both call."""
    assert _quick_start_commands() == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    command = [line.strip() for line in ci.splitlines()
               if line.strip() and not line.lstrip().startswith("#") and not line.startswith(("set ", "cd "))]
    assert command[-1] == "make test"
    assert all(line.startswith("command -v chromium ") for line in command[:-1]), \
        "before the tests, only the browser's install step (tests/test_app.py)"

    makefile = (ROOT / "Makefile").read_text()
    stamp = re.search(r"^STAMP\s*:?=\s*(\S+)", makefile, flags=re.M).group(1)
    assert _recipe(makefile, "test")[-1].endswith("&& python -m pytest -q")
    assert _recipe(makefile, "demo")[-1].endswith("&& editforge demo --out demo_output")
    assert re.search(r"^test: \$\(STAMP\)$", makefile, flags=re.M)
    assert re.search(r"^demo: \$\(STAMP\)$", makefile, flags=re.M)
    install = "\n".join(_recipe(makefile, "$(STAMP)"))
    assert re.search(r"^\$\(STAMP\): setup\.py$", makefile, flags=re.M), "reinstall when setup.py changes"
    assert stamp.startswith("$(VENV)/") and re.search(r"^VENV := \.venv$", makefile, flags=re.M)
    assert "TORCH := torch==2.13.0" in makefile
    torch_at = install.index("pip install --quiet $(TORCH)")
    assert re.search(r'pip install .*-e "\.\[test\]"', install[torch_at:]), "torch first, pinned, then editforge"
    assert "-m venv" in install and install.rstrip().endswith("touch $@")
