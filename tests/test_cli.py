"""Bad arguments give one clear error line and a non-zero exit, never a traceback; library noise
editforge knows is harmless stays hidden unless --verbose."""

import json
import os
import subprocess
import sys

import pytest


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "editforge", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["synth", "--out", "{tmp}", "--n", "-1"], "--n: must be 0 or more"),
        (["synth", "--out", "{tmp}", "--n", "3", "--imperfect", "1.5"], "--imperfect: must be between 0 and 1"),
        (["synth", "--out", "{tmp}", "--n", "3", "--imperfect", "x"], "--imperfect: expected a number"),
        (["synth", "--out", "{tmp}", "--n", "3", "--size", "8x8"], "--size: expected WIDTHxHEIGHT"),
        (["synth", "--out", "/proc/editforge-cannot-write", "--n", "3"], "cannot write to /proc/editforge-cannot-write"),
        (["synth", "--out", "{file}", "--n", "3"], "exists and is not a folder"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, args, message):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    args = [a.format(tmp=tmp_path / "out", file=a_file) for a in args]
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_synth_writes_the_manifest_contract(tmp_path):
    out = tmp_path / "world"
    result = run_cli("synth", "--out", str(out), "--n", "12", "--seed", "3", "--imperfect", "0.5",
                     "--size", "80x48", "--no-progress")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 12
    for record in records:
        for field in ("id", "source_image", "edited_image", "instruction", "source_caption",
                      "target_caption", "task", "mask_image", "ground_truth"):
            assert field in record
        assert (out / record["source_image"]).is_file() and (out / record["edited_image"]).is_file()
        assert record["mask_image"] is None or (out / record["mask_image"]).is_file()
        assert set(record["ground_truth"]) == {"instruction_following", "detail_preserving", "generation_quality"}
        for judgement in record["ground_truth"].values():
            assert isinstance(judgement["score"], int) and 0 <= judgement["score"] <= 5
            assert isinstance(judgement["feedback"], str) and judgement["feedback"]


# A command plugged into the real CLI that makes each kind of library noise editforge knows is
# harmless (editforge/quiet.py), plus two messages it does not know, which must always show.
NOISY_COMMAND = '''
import logging, os, sys, warnings

HELP = "make library noise"


def add_arguments(parser):
    pass


def run(args):
    import datasets
    from diffusers import DiffusionPipeline  # transformers: the torchvision fallback, at import
    from transformers.utils import logging as transformers_logging

    from editforge.testing.tiny_models import tiny_instruct_pix2pix_pipeline, tiny_sd3_pipeline

    tiny_instruct_pix2pix_pipeline().save_pretrained("pipe")  # "Writing model shards"
    tiny_sd3_pipeline().save_pretrained("sd3")  # "self.text_encoder_3=None ... cannot be saved."
    DiffusionPipeline.from_pretrained("pipe")  # "Loading pipeline components...", "Loading weights"
    with open("rows.jsonl", "w") as f:
        f.write('{"a": 1}\\n')
    datasets.load_dataset("json", data_files="rows.jsonl", cache_dir="cache")  # "Generating train split"
    warnings.warn("editforge-test: a warning editforge does not know")
    transformers_logging.get_logger("transformers.utils.import_utils").warning(
        "editforge-test: a transformers message editforge does not know")
    print("EDITFORGE_VERBOSE=" + os.environ["EDITFORGE_VERBOSE"])
    return 0
'''
KNOWN_NOISE = {
    "torchvision": "requires torchvision (not installed); falling back to",
    "transformers bars": "Loading weights",
    "diffusers bars": "Loading pipeline components",
    "a left-out component": "self.text_encoder_3=None of type <class 'NoneType'> cannot be saved.",
    "datasets bars": "Generating train split",
}


def start_noisy_command(tmp_path, *args):
    tmp_path.mkdir()
    (tmp_path / "noisy_command.py").write_text(NOISY_COMMAND)
    code = ("import sys, editforge.cli as cli; cli.COMMANDS.append(('noisy', 'noisy_command')); "
            "raise SystemExit(cli.main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k not in ("EDITFORGE_VERBOSE", "HF_DATASETS_DISABLE_PROGRESS_BARS")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, env=env)


def finish(process):
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_library_noise_is_hidden_unless_verbose(tmp_path):
    import importlib.util

    # both at once: most of each run is importing the stack
    started = [start_noisy_command(tmp_path / "quiet", "noisy"),
               start_noisy_command(tmp_path / "verbose", "noisy", "--verbose")]
    quiet, verbose = [finish(process) for process in started]

    # quiet: only the messages editforge does not know (a warning's second line is its source line)
    lines = [line for line in quiet.stderr.splitlines() if line.strip()]
    assert lines and all("editforge-test" in line for line in lines), quiet.stderr
    assert len([line for line in lines if "a warning editforge does not know" in line]) == 2
    assert len([line for line in lines if "a transformers message editforge does not know" in line]) == 1
    assert "EDITFORGE_VERBOSE=0" in quiet.stdout  # what the demo's training processes inherit

    # --verbose: all of it
    expected = dict(KNOWN_NOISE)
    if importlib.util.find_spec("torchvision") is not None:
        expected.pop("torchvision")  # no fallback to warn about
    for what, text in expected.items():
        assert text in verbose.stderr, f"{what}: {text!r} not in\n{verbose.stderr}"
    assert "editforge-test: a warning editforge does not know" in verbose.stderr
    assert "editforge-test: a transformers message editforge does not know" in verbose.stderr
    assert "EDITFORGE_VERBOSE=1" in verbose.stdout


@pytest.mark.parametrize(
    "argv, env, verbose",
    [
        (["demo"], None, False),
        (["--verbose", "demo"], None, True),
        (["demo", "--verbose", "--out", "x"], None, True),
        (["train", "--verbose", "reward-pix2pix", "--seed", "1"], None, True),
        (["demo"], "1", True),
        (["demo"], "0", False),
    ],
)
def test_verbose_flag_and_environment(monkeypatch, argv, env, verbose):
    import importlib

    from editforge import cli

    calls = []
    monkeypatch.setattr(cli, "quiet_libraries", lambda verbose: calls.append(verbose))
    for _, module_name in cli.COMMANDS:
        monkeypatch.setattr(importlib.import_module(module_name), "run", lambda args: 0)
    if env is None:
        monkeypatch.delenv("EDITFORGE_VERBOSE", raising=False)
    else:
        monkeypatch.setenv("EDITFORGE_VERBOSE", env)
    assert cli.main(argv) == 0
    assert calls == [verbose]
