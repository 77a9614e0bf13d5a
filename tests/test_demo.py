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
    for name in ("baseline", "reward"):
        scores = results["scores"][name]
        assert scores["items"] == 4 and scores["missing"] == 0
        assert 0.0 <= scores["following_accuracy"] <= 1.0
    assert json.loads((out / "results.json").read_text())["pipeline_folder"].endswith("reward")

    # the reward-conditioned pipeline folder is a published one
    assert (out / "reward" / "pipeline.py").is_file()
    assert (out / "reward" / "reward_conditioner" / "reward_module.py").is_file()
    capsys.readouterr()

    # a rerun with more training steps reuses data, annotation, dataset and base model
    config.train_steps = 3
    rerun = run_demo(config)
    printed = capsys.readouterr().out
    assert len(re.findall(r"done before with the same settings", printed)) == 4
    assert rerun["training"]["reward"]["steps"] == 3


def test_scores_summary_counts_what_the_judge_said():
    from editforge.demo import _summarize

    def record(seed, task, if_score, dp_score):
        rewards = {"instruction_following": {"score": if_score}, "detail_preserving": {"score": dp_score},
                   "generation_quality": {"score": 5}}
        return {"seed": seed, "task": task, "rewards": rewards}

    records = [record(0, "a", 5, 4), record(0, "b", 5, 1), record(1, "a", 0, 5), record(1, "b", 2, 5),
               {"seed": 1, "task": "a", "rewards": None}]  # missing: counted, never scored
    scores = _summarize("m", [0, 1], records)
    assert scores.items == 5 and scores.missing == 1
    assert scores.following_accuracy == 0.5 and scores.unchanged_share == 0.25
    assert scores.detail_preserving_when_following == 2.5
    assert scores.per_seed_accuracy == {"0": 1.0, "1": 0.0}
    assert scores.per_task_accuracy == {"a": 0.5, "b": 0.5}
    assert scores.means["detail_preserving"] == 3.75
