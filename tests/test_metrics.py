"""editforge metrics: values equal a direct computation with the same models, SSIM equals
scikit-image on real photographs, a killed run resumes with every item exactly once, bad inputs
are reported by id."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, load_dataset

from editforge.cli import main
from editforge.commands import metrics as metrics_command
from editforge.dataset_builders.build import build_dataset
from editforge.dataset_builders.errors import ItemError
from editforge.dataset_builders.features import EDIT_FEATURES
from editforge.dataset_builders.metrics import DEFAULT_CLIP_MODEL, DEFAULT_DINOV2_MODEL, compute_metrics
from editforge.dataset_builders.metrics.ssim import structural_similarity as ssim
from editforge.dataset_builders.synthetic import write_synthetic_dataset
from editforge.testing.tiny_encoders import save_tiny_clip, save_tiny_dinov2
from editforge.vocabulary import METRIC_NAMES

skimage = pytest.importorskip("skimage")
from skimage.metrics import structural_similarity  # noqa: E402

N = 30
NO_SOURCE_CAPTION, NO_TARGET_CAPTION, NO_CAPTIONS, BLANK_CAPTION = 3, 5, 7, 9


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return str(save_tiny_clip(folder / "clip")), str(save_tiny_dinov2(folder / "dinov2"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A canonical dataset of N synthetic 32 px triplets, a few without captions."""
    folder = tmp_path_factory.mktemp("world")
    write_synthetic_dataset(folder / "src", n=N, seed=5, imperfect_rate=0.5, width=32, height=32, progress=False)
    records = [json.loads(line) for line in (folder / "src" / "manifest.jsonl").read_text().splitlines()]
    records[NO_SOURCE_CAPTION].pop("source_caption")
    records[NO_TARGET_CAPTION].pop("target_caption")
    records[NO_CAPTIONS].pop("source_caption")
    records[NO_CAPTIONS].pop("target_caption")
    records[BLANK_CAPTION]["target_caption"] = "  "
    (folder / "src" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    build_dataset("manifest", folder / "src", folder / "ds", progress=False)
    return folder / "ds", folder / "src", records


def direct_metrics(record, base, clip_dir, dino_dir):
    """One item computed the plain way: each model's forward on its own processor's output."""
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor, CLIPModel

    clip, processor = CLIPModel.from_pretrained(clip_dir).eval(), AutoProcessor.from_pretrained(clip_dir)
    dino, dino_processor = AutoModel.from_pretrained(dino_dir).eval(), AutoImageProcessor.from_pretrained(dino_dir)
    source = PIL.Image.open(base / record["source_image"]).convert("RGB")
    edited = PIL.Image.open(base / record["edited_image"]).convert("RGB")
    captions = [record.get("source_caption"), record.get("target_caption")]
    captions = [c if c and c.strip() else None for c in captions]
    with torch.no_grad():
        images = [clip(**processor(images=[im], text=["x"], return_tensors="pt")).image_embeds[0] for im in (source, edited)]
        texts = [None if c is None else clip(**processor(images=[source], text=[c], return_tensors="pt")).text_embeds[0]
                 for c in captions]
        d = [dino(**dino_processor(images=[im], return_tensors="pt")).pooler_output[0] for im in (source, edited)]
    cos = lambda a, b: float(F.cosine_similarity(a, b, dim=0))  # noqa: E731
    return {
        "clip_sim_source": None if texts[0] is None else cos(images[0], texts[0]),
        "clip_sim_target": None if texts[1] is None else cos(images[1], texts[1]),
        "clip_sim_dir": None if None in texts else cos(images[1] - images[0], texts[1] - texts[0]),
        "clip_sim_image": cos(images[0], images[1]),
        "dinov2_sim": cos(d[0], d[1]),
        "ssim": structural_similarity(np.asarray(source) / 255.0, np.asarray(edited) / 255.0, data_range=1, channel_axis=2),
    }


def test_metric_values_equal_a_direct_computation(tmp_path, world, models):
    ds, src, records = world
    report = compute_metrics(ds, tmp_path / "out", clip_model=models[0], dinov2_model=models[1], batch_size=7,
                             num_workers=0, progress=False)
    assert report.computed == N and not report.skipped
    rows = list(load_dataset(str(tmp_path / "out"), split="train", streaming=True))
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    for row, record in zip(rows, records):
        expected = direct_metrics(record, src, *models)
        for name in METRIC_NAMES:
            if expected[name] is None:
                assert row["metrics"][name] is None, (row["id"], name)  # never a made-up value
            else:
                assert row["metrics"][name] == pytest.approx(expected[name], abs=1e-5), (row["id"], name)
    assert rows[NO_SOURCE_CAPTION]["metrics"]["clip_sim_target"] is not None
    assert rows[NO_TARGET_CAPTION]["metrics"]["clip_sim_source"] is not None
    assert rows[NO_CAPTIONS]["metrics"]["clip_sim_image"] is not None
    # everything else of each row is the input's, images byte for byte
    original = load_dataset(str(ds), split="train", cache_dir=str(tmp_path / "c1"))
    scored = load_dataset(str(tmp_path / "out"), split="train", cache_dir=str(tmp_path / "c2"))
    assert scored.features == EDIT_FEATURES
    assert scored.remove_columns("metrics").to_list() == original.remove_columns("metrics").to_list()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Quality metrics" in card and "pooler_output" in card and "| `dinov2_sim` |" in card
    assert "without both captions (null caption metrics): 4" in card


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_ssim_equals_scikit_image_on_real_photographs(name):
    photo = getattr(skimage.data, name)()[:160, :208] / 255.0
    rng = np.random.default_rng(0)
    variants = [
        np.clip(photo + rng.normal(0, 0.08, photo.shape), 0, 1),
        np.roll(photo, 3, axis=1),
        photo[::-1],
        np.clip(photo * 0.7 + 0.2, 0, 1),
    ]
    tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)  # noqa: E731
    batched = ssim(torch.stack([tensor(photo)] * len(variants)), torch.stack([tensor(v) for v in variants]))
    for value, variant in zip(batched, variants):
        assert float(value) == pytest.approx(structural_similarity(photo, variant, data_range=1, channel_axis=2), abs=1e-4)
    assert float(ssim(tensor(photo), tensor(photo))) == pytest.approx(1.0)


def png_cell(array) -> dict:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A dataset folder (Parquet written directly, as another tool might) with bad items."""
    folder = tmp_path_factory.mktemp("broken")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        rows.append({
            "id": f"b{i:02d}", "source_image": png_cell(image), "edited_image": png_cell(255 - image), "mask_image": None,
            "instruction": "invert", "source_caption": "noise", "target_caption": "inverted noise", "task": "t",
            "width": 24, "height": 24, "provenance": {"dataset": "broken", "original_id": str(i)},
            "rewards": None, "metrics": None, "viescore": None,
        })
    rows[4]["edited_image"] = {"bytes": rows[4]["edited_image"]["bytes"][:60], "path": None}  # truncated PNG
    rows[8]["edited_image"] = png_cell(np.zeros((20, 24, 3), dtype=np.uint8))  # another size
    (folder / "data").mkdir()
    Dataset.from_list(rows, features=EDIT_FEATURES).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


def test_corrupt_and_mismatched_inputs_are_reported_by_id(tmp_path, broken, models, capsys):
    out = tmp_path / "out"
    args = ["metrics", str(broken), str(out), "--clip-model", models[0], "--dinov2-model", models[1],
            "--batch-size", "3", "--num-workers", "0", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "item 'b04' (edited_image): truncated or corrupt image" in err
    assert not (out / "README.md").exists()  # nothing published...
    with pytest.raises(ItemError, match=r"item 'b04' \(edited_image\)"):  # ...and a rerun says the same at once
        compute_metrics(broken, out, clip_model=models[0], dinov2_model=models[1], num_workers=0, progress=False)

    report = compute_metrics(broken, out, clip_model=models[0], dinov2_model=models[1], batch_size=3,
                             num_workers=0, on_error="skip", progress=False)
    assert report.resumed == 6 and report.computed == 5  # the first two batches were kept
    assert {s["id"]: s["kind"] for s in report.skipped} == {"b04": "corrupt_image", "b08": "size_mismatch"}
    assert "the edited image is 24x20, the source 24x24" in report.skipped[1]["reason"]
    ids = [r["id"] for r in load_dataset(str(out), split="train", streaming=True)]
    assert ids == [f"b{i:02d}" for i in range(12) if i not in (4, 8)]
    card = (out / "README.md").read_text()
    assert "`b04` (edited_image): truncated or corrupt image" in card and "`b08` (edited_image)" in card


KILLABLE_RUN = """
import os, sys, time
from editforge.dataset_builders.metrics import scoring
real = scoring.score_batch
def traced(items, clip, dinov2):
    results = real(items, clip, dinov2)
    with open(os.environ["METRICS_TRACE"], "a") as trace:
        trace.write("".join(item["id"] + "\\n" for item in items))
    time.sleep(float(os.environ.get("METRICS_DELAY", "0")))
    return results
scoring.score_batch = traced
from editforge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_resumes_with_every_item_exactly_once(tmp_path, world, models):
    ds, _, records = world
    out, trace = tmp_path / "out", tmp_path / "trace.txt"
    args = [sys.executable, "-c", KILLABLE_RUN, "metrics", str(ds), str(out), "--clip-model", models[0],
            "--dinov2-model", models[1], "--batch-size", "4", "--num-workers", "2", "--no-progress"]
    env = dict(os.environ, METRICS_TRACE=str(trace), METRICS_DELAY="0.3", OMP_NUM_THREADS="1")
    process = subprocess.Popen(args, env=env)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if trace.exists() and len(trace.read_text().split()) >= 12:
                break  # three batches scored, more in flight
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no three batches within 120 s")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not (out / "README.md").exists()
    first = trace.read_text().split()
    assert len(first) < N

    env["METRICS_DELAY"] = "0"
    assert subprocess.run(args, env=env).returncode == 0
    computed = trace.read_text().split()
    assert sorted(set(computed)) == sorted(r["id"] for r in records)  # every item scored
    assert len(computed) - N <= 4  # at most the batch in flight scored twice
    ids = [r["id"] for r in load_dataset(str(out), split="train", streaming=True)]
    assert ids == [r["id"] for r in records]  # every item exactly once, in order
    assert not [p for p in out.iterdir() if p.name.startswith(".editforge-staging")]


def test_sharded_over_two_processes(tmp_path, world, models):
    """torchrun --nproc_per_node 2 (what accelerate launch starts): the processes share the items."""
    ds, _, records = world
    out = tmp_path / "out"
    from torchrun import run_torchrun

    result = run_torchrun(["-m", "editforge.cli", "metrics", str(ds), str(out), "--clip-model", models[0],
                           "--dinov2-model", models[1], "--batch-size", "4", "--num-workers", "0", "--no-progress"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("scored ") == 1 and "with 2 processes" in result.stdout
    rows = list(load_dataset(str(out), split="train", streaming=True))
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    single = compute_metrics(ds, tmp_path / "one", clip_model=models[0], dinov2_model=models[1], num_workers=0,
                             progress=False)
    assert single.computed == N
    for a, b in zip(rows, load_dataset(str(tmp_path / "one"), split="train", streaming=True)):
        for name in METRIC_NAMES:
            assert a["metrics"][name] == pytest.approx(b["metrics"][name], abs=1e-5)


def test_defaults_name_ultraedits_models_and_the_command_line_agrees():
    assert DEFAULT_CLIP_MODEL == metrics_command.DEFAULT_CLIP_MODEL == "openai/clip-vit-large-patch14"
    assert DEFAULT_DINOV2_MODEL == metrics_command.DEFAULT_DINOV2_MODEL == "facebook/dinov2-with-registers-large"


def test_a_dataset_in_other_features_is_refused(tmp_path, models):
    (tmp_path / "other" / "data").mkdir(parents=True)
    Dataset.from_dict({"id": ["a"], "image": ["x"]}).to_parquet(str(tmp_path / "other" / "data" / "train-0.parquet"))
    code = main(["metrics", str(tmp_path / "other"), str(tmp_path / "out"), "--clip-model", models[0],
                 "--dinov2-model", models[1], "--no-progress"])
    assert code == 2


def test_skipping_dinov2_normalisation_as_ultraedit_did(tmp_path, world, models):
    from transformers import AutoImageProcessor, AutoModel

    ds, src, records = world
    compute_metrics(ds, tmp_path / "raw", clip_model=models[0], dinov2_model=models[1], dinov2_normalize=False,
                    num_workers=0, progress=False)
    rows = list(load_dataset(str(tmp_path / "raw"), split="train", streaming=True))
    dino, processor = AutoModel.from_pretrained(models[1]).eval(), AutoImageProcessor.from_pretrained(models[1])
    processor.do_normalize = False
    for row, record in list(zip(rows, records))[:6]:
        images = [PIL.Image.open(src / record[f]).convert("RGB") for f in ("source_image", "edited_image")]
        with torch.no_grad():
            d = [dino(**processor(images=[im], return_tensors="pt")).pooler_output[0] for im in images]
        assert row["metrics"]["dinov2_sim"] == pytest.approx(float(F.cosine_similarity(d[0], d[1], dim=0)), abs=1e-5)
    assert "skipped, as in UltraEdit" in (tmp_path / "raw" / "README.md").read_text()
