"""Bad arguments give one clear error line and a non-zero exit, never a traceback."""

import json
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
