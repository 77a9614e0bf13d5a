"""`editforge eval` end to end on tiny pipelines: two models side by side, a stock InstructPix2Pix
folder, a GEdit-Bench-layout fixture judged with viescore-edit, and bad input."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import pytest
from editforge.dataset_builders.annotation import LoopbackServer
from editforge.dataset_builders.annotation.responders import JudgeResponder
from editforge.evaluation import evaluate, load_suite, parse_call_args
from editforge.evaluation.suites import GEDIT_TASKS

from editforge.cli import main
from editforge.errors import UsageError
from editforge.vocabulary import NO_FAILURE, PERSPECTIVES

STEPS = ["steps=2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A published reward-conditioned pipeline (ships its code) and a stock InstructPix2Pix folder."""
    from editforge.hub import publish_pipeline
    from editforge.testing.tiny_models import (
        tiny_instruct_pix2pix_pipeline,
        tiny_reward_pix2pix_pipeline,
    )

    root = tmp_path_factory.mktemp("models")
    publish_pipeline(tiny_reward_pix2pix_pipeline(perturb=0.2), root / "reward", repo_id="org/reward-pix2pix")
    tiny_instruct_pix2pix_pipeline(seed=1).save_pretrained(root / "plain")
    return root


def _figures(results, model):
    return {subset: {group: summary["figures"] for group, summary in groups.items()}
            for subset, groups in results.models[model]["subsets"].items()}


def test_two_models_in_one_run_equal_each_alone(models, tmp_path):
    both = evaluate([f"plain={models / 'plain'}", f"reward={models / 'reward'}"], "synthetic:n=6", tmp_path / "both",
                    seeds=[0, 1], model_args=STEPS + ["reward:rewards=5,5,5"], batch_size=4, progress=False)
    assert set(both.models) == {"plain", "reward"}
    for name, extra in (("plain", []), ("reward", ["reward:rewards=5,5,5"])):
        alone = evaluate([f"{name}={models / name}"], "synthetic:n=6", tmp_path / name, seeds=[0, 1],
                         model_args=STEPS + extra, batch_size=4, progress=False)
        assert _figures(alone, name) == _figures(both, name)
    # results.json: every figure with its interval and per-seed values, per task group
    data = json.loads((tmp_path / "both" / "results.json").read_text())
    figure = data["models"]["reward"]["subsets"]["all"]["all"]["figures"]["following_accuracy"]
    assert set(figure) == {"value", "ci95", "per_seed"} and set(figure["per_seed"]) == {"0", "1"}
    assert len(data["models"]["plain"]["subsets"]["all"]) >= 3  # task groups plus "all"
    # items.jsonl: one line per model x item x seed, with the image, the judge's answer and the metrics
    lines = [json.loads(line) for line in (tmp_path / "both" / "items.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 6 * 2 == len({(r["model"], r["item"], r["seed"]) for r in lines})
    assert all((tmp_path / "both" / r["image"]).is_file() and r["answer"] and r["metrics"] for r in lines)
    report = (tmp_path / "both" / "report.md").read_text()
    assert "| task group | plain | reward |" in report and "| figure | plain | reward |" in report
    assert (tmp_path / "both" / "grid.png").stat().st_size > 0


def test_two_custom_code_pipelines_in_one_run(models, tmp_path):
    """The reward model and an SD3 editing model, both published with their own pipeline.py."""
    from editforge.hub import publish_pipeline
    from editforge.testing.tiny_models import tiny_sd3_instruct_pix2pix_pipeline

    publish_pipeline(tiny_sd3_instruct_pix2pix_pipeline(perturb=0.1), tmp_path / "sd3", repo_id="org/sd3-pix2pix")
    results = evaluate([f"reward={models / 'reward'}", f"sd3={tmp_path / 'sd3'}"], "synthetic:n=3,sizes=32x32",
                       tmp_path / "out", seeds=[0], model_args=STEPS, batch_size=4, progress=False)
    assert set(results.models) == {"reward", "sd3"}
    lines = (tmp_path / "out" / "items.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 3


def test_two_processes_share_the_edits_and_give_the_numbers_of_one(models, tmp_path):
    """torchrun --nproc_per_node 2 (what accelerate launch starts): each process makes its share of
    the edits, the main one judges them all; the figures are those of a one-process run."""
    from torchrun import run_torchrun

    common = ["--suite", "synthetic:n=6", "--seeds", "0,1", "--model-args", "steps=2", "--batch-size", "4",
              "--no-progress"]
    result = run_torchrun(["-m", "editforge.cli", "eval", f"plain={models / 'plain'}", "--out", str(tmp_path / "two"),
                           *common])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1  # one report, by the main process
    shares = sorted(int(n) for n in re.findall(r"eval: process \d of 2 makes (\d+) edit", result.stdout))
    assert len(shares) == 2 and sum(shares) == 12 and shares[0] > 0
    lines = [json.loads(line) for line in (tmp_path / "two" / "items.jsonl").read_text().splitlines()]
    assert len(lines) == 12 == len({(r["item"], r["seed"]) for r in lines})
    one = evaluate([f"plain={models / 'plain'}"], "synthetic:n=6", tmp_path / "one", seeds=[0, 1], model_args=STEPS,
                   batch_size=4, progress=False)
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["models"]["plain"]["subsets"] == one.models["plain"]["subsets"]


def test_rerun_of_a_finished_run_generates_and_judges_nothing(models, tmp_path):
    args = dict(seeds=[0], model_args=STEPS, batch_size=4, progress=False)
    first = evaluate([f"plain={models / 'plain'}"], "synthetic:n=4", tmp_path, **args)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "images").rglob("*.png")}
    again = evaluate([f"plain={models / 'plain'}"], "synthetic:n=4", tmp_path, **args)
    assert _figures(first, "plain") == _figures(again, "plain")
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "images").rglob("*.png")}
    with pytest.raises(UsageError, match="holds model plain"):  # other settings under the same name
        evaluate([f"plain={models / 'plain'}"], "synthetic:n=4", tmp_path, **{**args, "model_args": ["steps=3"]})


def test_stock_instruct_pix2pix_folder_evaluates_with_no_editforge_component(models, tmp_path, capsys):
    plain = models / "plain"
    assert "editforge" not in (plain / "model_index.json").read_text() and not list(plain.rglob("*.py"))
    assert json.loads((plain / "model_index.json").read_text())["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    code = main(["eval", str(plain), "--suite", "synthetic:n=4", "--out", str(tmp_path), "--model-args", "steps=2",
                 "--no-progress"])
    assert code == 0
    assert "| task group | plain |" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["models"]["plain"]["subsets"]["all"]["all"]["judged"] == 4


# --- GEdit-Bench --------------------------------------------------------------------------------


class HashJudge(JudgeResponder):
    """A deterministic judge for real-image suites: scores from a hash of the request's images."""

    def answer(self, rubric, instruction, image_urls):
        digest = hashlib.sha256("".join(image_urls).encode()).digest()
        return rubric.from_perspectives({p: {"score": digest[i] % 6, "feedback": NO_FAILURE}
                                         for i, p in enumerate(PERSPECTIVES)})


def _png(seed: int, size=(32, 32)) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_gedit_fixture(folder: Path, per_task: int = 1, corrupt: str | None = None) -> Path:
    """GEdit-Bench's Hub layout: data/train-00000-of-00001.parquet with its columns, EN and CN."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for language in ("en", "cn"):
        for t, task in enumerate(GEDIT_TASKS):
            for k in range(per_task):
                key = f"{task}-{k}"
                image = b"not a png" if corrupt == f"{language}/{key}" else _png(100 * t + k)
                text = f"do {task} number {k}" if language == "en" else f"编辑 {task} {k}"
                rows.append({"task_type": task, "key": key, "instruction": text, "instruction_language": language,
                             "input_image": {"bytes": image, "path": f"{key}.png"},
                             "input_image_raw": {"bytes": image, "path": f"{key}_raw.png"},
                             "Intersection_exist": (t + k) % 2 == 0})
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "train-00000-of-00001.parquet")
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                      "  - split: train\n    path: data/train-*\n---\n")
    return folder


@pytest.fixture
def hash_judge(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with LoopbackServer(HashJudge(), model="hash-judge") as server:
        yield server


def test_gedit_bench_layout_with_viescore_edit_reports_the_11_groups(models, tmp_path, hash_judge):
    source = write_gedit_fixture(tmp_path / "gedit")
    suite = load_suite(f"gedit-bench:{source}")
    assert len(suite.items) == 22 and suite.rubric == "viescore-edit"
    results = evaluate([f"plain={models / 'plain'}"], f"gedit-bench:{source}", tmp_path / "out", seeds=[0],
                       base_url=hash_judge.base_url, judge_model="hash-judge", model_args=STEPS, progress=False)
    subsets = results.models["plain"]["subsets"]
    assert list(subsets) == ["en", "en-intersection", "cn", "cn-intersection"]
    assert list(subsets["en"]) == [*GEDIT_TASKS, "all"]
    assert subsets["en"]["all"]["items"] == 11 and subsets["en-intersection"]["all"]["items"] == 6
    assert set(subsets["cn"]["color_alter"]["figures"]) == {"sc", "pq", "o"}
    figures = subsets["en"]["all"]["figures"]
    assert 0 <= figures["sc"]["value"] <= 10 and 0 <= figures["o"]["value"] <= 10
    assert hash_judge.stats["chat_answered"] == 22
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Subset: en-intersection" in report and "### cn / tone_transfer" in report
    assert "O per task group" in report


# --- bad input ----------------------------------------------------------------------------------


def test_unknown_suite_name(models, tmp_path, capsys):
    code = main(["eval", str(models / "plain"), "--suite", "gedit-bench-typo", "--out", str(tmp_path)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "unknown suite 'gedit-bench-typo'" in error and len(error.splitlines()) == 1


def test_suite_without_the_needed_columns(models, tmp_path):
    manifest = tmp_path / "suite" / "manifest.jsonl"
    manifest.parent.mkdir()
    (manifest.parent / "a.png").write_bytes(_png(0))
    manifest.write_text(json.dumps({"id": "a", "source_image": "a.png", "edited_image": "a.png"}) + "\n")
    with pytest.raises(UsageError, match=r"manifest.jsonl:1 \(item 'a'\): the suite needs instruction"):
        evaluate([str(models / "plain")], str(manifest), tmp_path / "out", progress=False)
    gedit = tmp_path / "gedit"
    (gedit / "data").mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"key": "k", "instruction": "x"}]), gedit / "data" / "train.parquet")
    with pytest.raises(UsageError, match="lacks the column"):
        load_suite(f"gedit-bench:{gedit}")


def test_model_folder_that_is_not_a_pipeline(tmp_path, capsys):
    (tmp_path / "not_a_pipeline").mkdir()
    (tmp_path / "not_a_pipeline" / "config.json").write_text("{}")
    code = main(["eval", str(tmp_path / "not_a_pipeline"), "--suite", "synthetic:n=2", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "not a diffusers pipeline folder (no model_index.json)" in error
    assert "not_a_pipeline" in error and len(error.splitlines()) == 1


def test_unknown_model_argument_names_the_model(models, tmp_path):
    with pytest.raises(UsageError, match="model plain: StableDiffusionInstructPix2PixPipeline takes no argument"):
        evaluate([f"plain={models / 'plain'}"], "synthetic:n=2", tmp_path, model_args=["rewards=5,5,5"], progress=False)


def test_corrupt_image_fails_naming_the_item_or_is_skipped_and_counted(models, tmp_path, hash_judge):
    source = write_gedit_fixture(tmp_path / "gedit", corrupt="en/style_change-0")
    common = dict(seeds=[0], base_url=hash_judge.base_url, judge_model="hash-judge", model_args=STEPS, progress=False)
    with pytest.raises(UsageError, match=r"item 'en/style_change-0' \(source_image\).*--on-error skip"):
        evaluate([f"plain={models / 'plain'}"], f"gedit-bench:{source}", tmp_path / "out", **common)
    results = evaluate([f"plain={models / 'plain'}"], f"gedit-bench:{source}", tmp_path / "out", on_error="skip",
                       **common)
    assert [s["id"] for s in results.skipped] == ["en/style_change-0"]
    assert results.models["plain"]["subsets"]["en"]["all"]["items"] == 10
    assert "style_change" not in results.models["plain"]["subsets"]["en"]
    assert "Skipped items: 1" in (tmp_path / "out" / "report.md").read_text()


def test_model_arguments_parse_lists_and_numbers():
    assert parse_call_args("rewards=5,5,5,guidance_scale=3.5,steps=2,reward_feedback=none") == {
        "rewards": [5, 5, 5], "guidance_scale": 3.5, "num_inference_steps": 2, "reward_feedback": None}
    with pytest.raises(UsageError, match="set by the harness"):
        parse_call_args("generator=1")
    from editforge.evaluation import parse_model_args

    assert parse_model_args(["steps=2", "reward:rewards=5,5,5", "plain=guidance_scale=3"], ["plain", "reward"]) == {
        "plain": {"num_inference_steps": 2, "guidance_scale": 3}, "reward": {"num_inference_steps": 2, "rewards": [5, 5, 5]}}
    with pytest.raises(UsageError, match="no model is called 'other'"):
        parse_model_args(["other:steps=2"], ["plain"])


def test_magicbrush_layout_is_read_by_the_dataset_builder(models, tmp_path, hash_judge):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"img_id": 100 + i, "turn_index": 1, "source_img": {"bytes": _png(i), "path": None},
             "mask_img": {"bytes": _png(50 + i), "path": None}, "instruction": f"make it red {i}",
             "target_img": {"bytes": _png(90 + i), "path": None}} for i in range(3)]
    (tmp_path / "mb" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mb" / "data" / "dev-00000-of-00001.parquet")
    suite = load_suite(f"magicbrush:{tmp_path / 'mb'}", cache_dir=tmp_path / "cache")
    assert [item.id for item in suite.items] == ["100-1", "101-1", "102-1"]
    results = evaluate([f"plain={models / 'plain'}"], suite, tmp_path / "out", base_url=hash_judge.base_url,
                       judge_model="hash-judge", model_args=STEPS, progress=False)
    assert results.models["plain"]["subsets"]["all"]["all"]["judged"] == 3
    assert set(results.models["plain"]["subsets"]["all"]["all"]["figures"]) >= {"following_accuracy", "not_edited"}


def test_hub_ids_load_from_the_hub_cache(models, tmp_path):
    """A published reward model (ships code: needs trust_remote_code) and a stock one, by Hub id, offline."""
    from editforge.testing.fake_hub import add_repo, offline_hub

    add_repo(tmp_path / "hub", "org/reward-pix2pix", models / "reward")
    add_repo(tmp_path / "hub", "org/plain-pix2pix", models / "plain")
    with offline_hub(tmp_path / "hub"):
        with pytest.raises(UsageError, match="model reward-pix2pix: cannot load.*--trust-remote-code"):
            evaluate(["org/reward-pix2pix"], "synthetic:n=2", tmp_path / "refused", model_args=STEPS, progress=False)
        results = evaluate(["org/reward-pix2pix", "org/plain-pix2pix"], "synthetic:n=2", tmp_path / "out",
                           model_args=STEPS + ["reward-pix2pix:rewards=5,5,5"], trust_remote_code=True, progress=False)
    assert list(results.models) == ["reward-pix2pix", "plain-pix2pix"]
    assert all(m["subsets"]["all"]["all"]["judged"] == 2 for m in results.models.values())


def test_edits_made_elsewhere_are_judged_like_a_model(models, tmp_path):
    """``outputs:PATH``: the ideal edits of the synthetic suite score (near) perfectly; a missing one is named."""
    suite = load_suite("synthetic:n=4,sizes=32x32", cache_dir=tmp_path / "suite")
    ideal = tmp_path / "ideal"
    ideal.mkdir()
    for item in suite.items:
        Path(item.reference["ideal_image"]).replace(ideal / f"{item.id}.png")
    results = evaluate([f"ideal=outputs:{ideal}", f"plain={models / 'plain'}"], suite, tmp_path / "out",
                       seeds=[0, 1], model_args=["plain:steps=2"], progress=False)
    assert results.figure("ideal", "following_accuracy") == 1.0
    assert results.figure("ideal", "following_accuracy") > results.figure("plain", "following_accuracy")
    (ideal / f"{suite.items[0].id}.png").unlink()
    with pytest.raises(UsageError, match=f"model ideal: no edit of item '{suite.items[0].id}'"):
        evaluate([f"ideal=outputs:{ideal}"], suite, tmp_path / "out2", progress=False)


def test_synthetic_suite_has_every_edit_kind_at_several_aspect_ratios(tmp_path):
    from editforge.dataset_builders.synthetic import TASKS

    suite = load_suite("synthetic", cache_dir=tmp_path)
    assert {item.task for item in suite.items} == set(TASKS)
    assert {item.tags["size"] for item in suite.items} == {"32x32", "48x32", "32x48"}
    assert suite.judge == "oracle" and suite.rubric == "multi-reward"
    with pytest.raises(UsageError, match="unknown option"):
        load_suite("synthetic:count=3", cache_dir=tmp_path)


def test_region_masks_reach_a_mask_model_and_stay_away_from_others(tmp_path):
    """The synthetic suite's local edits carry their masks: a 48-channel SD3 InstructPix2Pix gets
    each item's mask (all white for a free-form item), exactly as if called directly; a 32-channel one
    none."""
    import numpy as np
    import torch
    from PIL import Image

    from editforge.evaluation.harness import image_path, item_seed
    from editforge.hub import publish_pipeline
    from editforge.testing.tiny_models import tiny_sd3_instruct_pix2pix_pipeline

    for name, with_mask in (("masked", True), ("free", False)):
        publish_pipeline(tiny_sd3_instruct_pix2pix_pipeline(seed=0, with_mask=with_mask, perturb=0.3), tmp_path / name,
                         spec="sd3_instruct_pix2pix", repo_id=f"org/{name}")
    results = evaluate([f"masked={tmp_path / 'masked'}", f"free={tmp_path / 'free'}"], "synthetic:n=6,sizes=32x32",
                       tmp_path / "out", model_args=["steps=2"], batch_size=1, progress=False)  # as called alone
    assert set(results.models) == {"masked", "free"}
    suite = load_suite("synthetic:n=6,sizes=32x32", cache_dir=tmp_path / "out" / "suite")
    with_masks = [item for item in suite.items if item.mask_image is not None]
    assert with_masks and len(with_masks) < len(suite.items)
    from diffusers import DiffusionPipeline

    for name in ("masked", "free"):
        pipe = DiffusionPipeline.from_pretrained(tmp_path / name, trust_remote_code=True)
        for item in (with_masks[0], next(i for i in suite.items if i.mask_image is None)):
            source = Image.open(item.source_image).convert("RGB")
            mask = Image.open(item.mask_image).convert("L") if (item.mask_image and pipe.takes_mask) else None
            direct = pipe(item.instruction, image=source, mask_image=mask, num_inference_steps=2,
                          generator=torch.Generator().manual_seed(item_seed(0, item.id))).images[0]
            made = Image.open(image_path(tmp_path / "out", name, 0, item.id))
            assert np.array_equal(np.asarray(made), np.asarray(direct)), (name, item.id)
