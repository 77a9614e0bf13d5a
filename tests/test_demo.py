"""`editforge demo` end to end on a miniature budget: every stage runs, the report shows both
models, the pipeline folder loads, and a rerun reuses what was already done."""

import json
import re

from editforge.demo import DemoConfig, run_demo


def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    config = DemoConfig(out=str(tmp_path / "demo"), train_items=24, eval_items=4, vae_steps=2, train_steps=2,
                        batch_size=4, eval_seeds="0", inference_steps=2, grid_rows=4, progress=False)
    results = run_demo(config)
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    assert "| InstructPix2Pix baseline |" in report and "| reward-conditioned (rewards 5/5/5) |" in report
    assert "47.7% -> 57.1%" in report and "Seeds: data 0" in report
    assert (out / "grid.png").stat().st_size > 0
    assert results["annotation"]["judged"] == 24 and results["annotation"]["missing"] == 0
    assert results["dataset"]["examples"] == 24
    assert list(results["scores"]) == ["baseline", "reward", "reward_guided", "vae_ceiling"]
    for name, scores in results["scores"].items():
        assert scores["items"] == 4 and scores["missing"] == 0
        assert 0.0 <= scores["following_accuracy"] <= 1.0
        assert f"| {scores['judged']}/{scores['rows']} |" in report
    # the evaluation is editforge eval's: its items file has one line per (model, item, seed)
    lines = (out / "eval" / "items.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 4 and (out / "eval" / "results.json").is_file()
    assert json.loads((out / "results.json").read_text())["pipeline_folder"].endswith("reward")

    # the reward-conditioned pipeline folder is a published one
    assert (out / "reward" / "pipeline.py").is_file()
    assert (out / "reward" / "reward_conditioner" / "reward_module.py").is_file()
    capsys.readouterr()

    # a rerun with more training steps reuses data, annotation, dataset and base model
    edits = out / "eval" / "images" / "reward" / "seed0"
    made = {path.name: path.stat().st_mtime_ns for path in edits.iterdir()}
    config.train_steps = 3
    rerun = run_demo(config)
    printed = capsys.readouterr().out
    assert len(re.findall(r"done before with the same settings", printed)) == 4
    assert rerun["training"]["reward"]["steps"] == 3
    # retrained models: the evaluation is redone, never mixed with the old models' edits
    assert rerun["scores"]["reward"]["rows"] == 4 and len((out / "eval" / "items.jsonl").read_text().splitlines()) == 16
    assert sorted(made) == sorted(p.name for p in edits.iterdir())
    assert all(made[path.name] != path.stat().st_mtime_ns for path in edits.iterdir())


def test_the_harness_scores_count_what_the_judge_said():
    """The figures of the demo's table, as the evaluation harness computes them."""
    from editforge.evaluation.scoring import summarize
    from editforge.vocabulary import MULTI_REWARD

    def row(item, seed, if_score, dp_score):
        return {"item": item, "seed": seed,
                "metrics": {"instruction_following": if_score, "detail_preserving": dp_score, "generation_quality": 5}}

    rows = [row("a", 0, 5, 4), row("b", 0, 5, 1), row("a", 1, 0, 5), row("b", 1, 2, 5),
            {"item": "c", "seed": 1, "metrics": None}]  # missing: counted, never scored
    summary = summarize(rows, MULTI_REWARD, [0, 1])
    figures = {name: f["value"] for name, f in summary["figures"].items()}
    assert (summary["rows"], summary["judged"], summary["missing"]) == (5, 4, 1)
    assert figures["following_accuracy"] == 0.5 and figures["not_edited"] == 0.25
    assert figures["dp_when_following"] == 2.5 and figures["mean_detail_preserving"] == 3.75
    assert summary["figures"]["following_accuracy"]["per_seed"] == {"0": 1.0, "1": 0.0}
