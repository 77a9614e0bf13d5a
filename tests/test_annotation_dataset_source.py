"""`editforge annotate` on a dataset folder written by build-dataset, and back into a dataset."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def test_annotate_a_dataset_folder_and_rebuild_it(tmp_path):
    from datasets import load_dataset

    from editforge.dataset_builders import build_dataset
    from editforge.dataset_builders.synthetic import write_synthetic_dataset

    manifest = write_synthetic_dataset(tmp_path / "synth", n=12, seed=3, imperfect_rate=0.6, progress=False)
    build_dataset("manifest", manifest, tmp_path / "plain", config="edits", split="train", progress=False)

    out = tmp_path / "judged" / "rewards.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "editforge", "annotate", str(tmp_path / "plain"), "--config", "edits",
         "--out", str(out), "--judge", "oracle", "--cache", str(tmp_path / "cache.sqlite"), "--no-progress"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    truth = {json.loads(line)["id"]: json.loads(line) for line in manifest.read_text().splitlines()}
    assert [line["id"] for line in lines] == list(truth)
    for line in lines:
        expected = truth[line["id"]]
        assert {p: v["score"] for p, v in line["rewards"].items()} == {
            p: v["score"] for p, v in expected["ground_truth"].items()}
        written = np.asarray(Image.open(out.parent / line["edited_image"]).convert("RGB"))
        original = np.asarray(Image.open(manifest.parent / expected["edited_image"]).convert("RGB"))
        assert np.array_equal(written, original)

    build_dataset("manifest", out, tmp_path / "annotated", progress=False)
    rows = load_dataset(str(tmp_path / "annotated"), split="train")
    assert len(rows) == 12 and all(r["rewards"] is not None for r in rows)


def test_a_folder_that_is_neither_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "editforge", "annotate", str(tmp_path / "empty"), "--out", str(tmp_path / "o.jsonl"),
         "--judge", "oracle"], capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "holds neither a manifest.jsonl nor a dataset" in result.stderr
