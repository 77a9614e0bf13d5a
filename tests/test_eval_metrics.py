"""`editforge eval --metrics`: UltraEdit's CLIP / DINOv2 / SSIM metrics of every edit, and the Emu Edit
test set's Hub layout (whose captions those metrics read)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_eval_harness import STEPS, _png, hash_judge  # noqa: F401 - hash_judge is a fixture

from editforge.cli import main
from editforge.evaluation import evaluate, load_suite
from editforge.evaluation.suites import EMU_EDIT_TASKS
from editforge.vocabulary import METRIC_NAMES


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A stock InstructPix2Pix folder and tiny CLIP / DINOv2 checkpoints."""
    from editforge.testing.tiny_encoders import save_tiny_clip, save_tiny_dinov2
    from editforge.testing.tiny_models import tiny_instruct_pix2pix_pipeline

    root = tmp_path_factory.mktemp("eval-metrics")
    tiny_instruct_pix2pix_pipeline(seed=1).save_pretrained(root / "plain")
    return root, str(save_tiny_clip(root / "clip")), str(save_tiny_dinov2(root / "dinov2"))


def write_emu_edit_fixture(folder: Path, per_task: int = 1) -> Path:
    """The Emu Edit test set's Hub layout: data/test-*.parquet and data/validation-*.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, count in (("test", per_task), ("validation", 1)):
        rows = []
        for t, task in enumerate(EMU_EDIT_TASKS):
            for k in range(count):
                idx = len(rows)
                rows.append({"instruction": f"{task} edit {k}", "image": {"bytes": _png(10 * t + k), "path": None},
                             "task": task, "split": split, "idx": idx, "hash": f"h{idx}",
                             "input_caption": f"a photo {idx}", "output_caption": f"a {task} photo {idx}"})
        pq.write_table(pa.Table.from_pylist(rows), folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


def test_emu_edit_layout_reads_its_groups_and_captions(tmp_path):
    source = write_emu_edit_fixture(tmp_path / "emu", per_task=2)
    suite = load_suite(f"emu-edit:{source}")
    assert len(suite.items) == 14 and suite.group_order() == list(EMU_EDIT_TASKS)
    first = suite.items[0]
    assert first.id == "test/0" and first.task == "background"
    assert first.reference == {"source_caption": "a photo 0", "target_caption": "a background photo 0"}
    assert len(load_suite(f"emu-edit:{source},split=validation").items) == 7
    with pytest.raises(Exception, match="split must be one of test, validation"):
        load_suite(f"emu-edit:{source},split=train")


def test_metrics_of_every_edit_equal_the_encoders_computed_directly(workspace, tmp_path):
    from editforge.dataset_builders.metrics import ClipEncoder, Dinov2Encoder, structural_similarity

    root, clip_id, dinov2_id = workspace
    out = tmp_path / "out"
    results = evaluate([f"plain={root / 'plain'}"], "synthetic:n=4", out, seeds=[0, 1], model_args=STEPS,
                       progress=False, metrics=True, clip_model=clip_id, dinov2_model=dinov2_id)
    lines = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all(set(METRIC_NAMES) <= set(r["quality"]) for r in lines)
    assert all(r["metrics"] is not None for r in lines)  # the judge's answers are kept beside them

    suite = load_suite("synthetic:n=4", cache_dir=out / "suite")
    row = lines[0]
    item = next(i for i in suite.items if i.id == row["item"])
    source = Image.open(item.source_image).convert("RGB")
    edited = Image.open(out / row["image"]).convert("RGB")
    clip, dinov2 = ClipEncoder(clip_id), Dinov2Encoder(dinov2_id)
    images = clip.encode_images(torch.stack(clip.preprocess([source, edited])))
    texts = clip.encode_texts([item.reference["source_caption"], item.reference["target_caption"]])
    dino = dinov2.encode_images(torch.stack([dinov2.image_processor(images=[p], return_tensors="pt")["pixel_values"][0]
                                             for p in (source, edited)]))
    pixels = [torch.from_numpy(np.array(p)).permute(2, 0, 1)[None].double() / 255 for p in (source, edited)]
    expected = {
        "clip_sim_image": float(F.cosine_similarity(images[0], images[1], dim=0)),
        "clip_sim_source": float(F.cosine_similarity(images[0], texts[0], dim=0)),
        "clip_sim_target": float(F.cosine_similarity(images[1], texts[1], dim=0)),
        "clip_sim_dir": float(F.cosine_similarity(images[1] - images[0], texts[1] - texts[0], dim=0)),
        "dinov2_sim": float(F.cosine_similarity(dino[0], dino[1], dim=0)),
        "ssim": float(structural_similarity(*pixels)[0]),
    }
    for name, value in expected.items():
        assert row["quality"][name] == pytest.approx(value, abs=1e-5), name

    # figures: the mean over the edits, per group, beside the judge's
    figures = results.models["plain"]["subsets"]["all"]["all"]["figures"]
    mean_ssim = sum(r["quality"]["ssim"] for r in lines) / len(lines)
    assert figures["ssim"]["value"] == pytest.approx(mean_ssim, abs=1e-4)
    assert "following_accuracy" in figures
    assert "| SSIM source-edit |" in (out / "report.md").read_text()

    # a rerun computes nothing again (the metrics are in items.jsonl with the models that made them)
    again = evaluate([f"plain={root / 'plain'}"], "synthetic:n=4", out, seeds=[0, 1], model_args=STEPS,
                     progress=False, metrics=True, clip_model=clip_id, dinov2_model=dinov2_id)
    assert again.models == results.models


def test_emu_edit_with_metrics_from_the_command_line(workspace, tmp_path, hash_judge, capsys):
    root, clip_id, dinov2_id = workspace
    source = write_emu_edit_fixture(tmp_path / "emu")
    code = main(["eval", str(root / "plain"), "--suite", f"emu-edit:{source}", "--out", str(tmp_path / "out"),
                 "--base-url", hash_judge.base_url, "--model", "hash-judge", "--model-args", "steps=2",
                 "--metrics", "--clip-model", clip_id, "--dinov2-model", dinov2_id, "--no-progress"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    groups = data["models"]["plain"]["subsets"]["all"]
    assert list(groups) == [*EMU_EDIT_TASKS, "all"]
    assert groups["all"]["figures"]["clip_sim_dir"]["value"] is not None  # captions from the suite
    assert "| CLIP direction (CLIPdir) |" in (tmp_path / "out" / "report.md").read_text()
