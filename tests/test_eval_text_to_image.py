"""`editforge eval` on text-to-image suites: the synthetic world's prompts judged by the alignment
oracle, DrawBench's Hub layout, and pipelines of the wrong kind refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editforge.dataset_builders.annotation import LoopbackServer
from editforge.dataset_builders.annotation.responders import ConstantResponder
from editforge.errors import UsageError
from editforge.evaluation import evaluate, load_suite
from editforge.evaluation.suites import DRAWBENCH_CATEGORIES


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from editforge.testing.tiny_models import tiny_instruct_pix2pix_pipeline, tiny_text_to_image_pipeline

    root = tmp_path_factory.mktemp("t2i-models")
    tiny_text_to_image_pipeline(seed=0).save_pretrained(root / "sd")
    tiny_instruct_pix2pix_pipeline(seed=1).save_pretrained(root / "ip2p")
    return root


def render_ideal(suite, folder: Path) -> Path:
    """Each prompt's scene drawn by the world itself: what a perfect model would make."""
    from editforge.dataset_builders.annotation.sources import file_stem
    from editforge.dataset_builders.synthetic.world import Scene, Shape, render

    folder.mkdir(parents=True)
    for item in suite.items:
        scene = item.reference["scene"]
        scene = Scene(scene["background"], tuple(Shape(**shape) for shape in scene["shapes"]))
        Image.fromarray(render(scene, item.width, item.height)).save(folder / f"{file_stem(item.id)}.png")
    return folder


def test_synthetic_prompts_are_judged_by_the_alignment_oracle(models, tmp_path):
    suite = load_suite("synthetic-prompts:n=8")
    assert suite.kind == "text-to-image" and suite.rubric == "t2i-alignment" and suite.judge == "oracle"
    assert {item.task for item in suite.items} <= {"1 shape", "2 shapes", "3 shapes", "4 shapes"}
    ideal = render_ideal(suite, tmp_path / "ideal")
    results = evaluate([f"sd={models / 'sd'}", f"ideal=outputs:{ideal}"], "synthetic-prompts:n=8", tmp_path / "out",
                       seeds=[0, 1], model_args=["sd:steps=2"], progress=False)
    ideal_figures = results.models["ideal"]["subsets"]["all"]["all"]
    assert ideal_figures["figures"]["alignment_accuracy"]["value"] == 1.0 and ideal_figures["missing"] == 0
    sd = results.models["sd"]["subsets"]["all"]["all"]
    assert sd["rows"] == 16 and sd["missing"] == 0
    assert sd["figures"]["mean_alignment"]["value"] < 5.0  # a random tiny model draws no scene
    lines = [json.loads(line) for line in (tmp_path / "out" / "items.jsonl").read_text().splitlines()]
    made = Image.open(tmp_path / "out" / lines[0]["image"])
    assert made.size == (32, 32)  # the suite's size, asked of the pipeline
    report = (tmp_path / "out" / "report.md").read_text()
    assert "alignment accuracy (alignment = 5)" in report
    assert np.asarray(Image.open(tmp_path / "out" / "grid.png")).shape[1] == 200 + 2 * 96  # prompt + 2 models


def write_drawbench_fixture(folder: Path) -> Path:
    """sayakpaul/drawbench's layout: one Parquet file with Prompts and Category."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"Prompts": f"a prompt about {c.lower()} {k}", "Category": c} for c in DRAWBENCH_CATEGORIES for k in range(2)]
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "train-00000-of-00001.parquet")
    return folder


def test_drawbench_layout_reports_its_11_categories(models, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    source = write_drawbench_fixture(tmp_path / "drawbench")
    suite = load_suite(f"drawbench:{source}")
    assert len(suite.items) == 22 and suite.group_order() == list(DRAWBENCH_CATEGORIES)
    with LoopbackServer(ConstantResponder(), model="constant") as server:
        results = evaluate([f"sd={models / 'sd'}"], f"drawbench:{source}", tmp_path / "out", seeds=[0],
                           base_url=server.base_url, judge_model="constant", model_args=["steps=2"], progress=False)
        assert server.stats["chat_answered"] == 22
    groups = results.models["sd"]["subsets"]["all"]
    assert list(groups) == [*DRAWBENCH_CATEGORIES, "all"]
    assert groups["all"]["figures"]["alignment_accuracy"]["value"] == 1.0  # the constant judge: all flawless


def test_a_suite_refuses_pipelines_of_the_other_kind(models, tmp_path):
    with pytest.raises(UsageError, match="is not a text-to-image pipeline .*takes an input image"):
        evaluate([f"ip2p={models / 'ip2p'}"], "synthetic-prompts:n=2", tmp_path / "a", progress=False)
    with pytest.raises(UsageError, match="takes no prompt and image: not an editing pipeline"):
        evaluate([f"sd={models / 'sd'}"], "synthetic:n=2", tmp_path / "b", progress=False)
    with pytest.raises(UsageError, match="--metrics .* applies to edit suites"):
        evaluate([f"sd={models / 'sd'}"], "synthetic-prompts:n=2", tmp_path / "c", metrics=True, progress=False)
