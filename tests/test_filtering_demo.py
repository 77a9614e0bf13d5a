"""`editforge demo ultraedit-filtering` end to end on a miniature budget: every stage runs (candidates,
encoder, metrics, filter, base model, both trainings, evaluation), the report has its rows, and a rerun
reuses what was already done."""

import json
import re

import pytest

from editforge.demos.ultraedit_filtering import FilteringConfig, run_filtering_demo


def test_filtering_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    config = FilteringConfig(out=str(tmp_path / "demo"), candidates=40, eval_items=4, encoder_items=20, encoder_steps=2,
                             encoder_batch_size=4, encoder_width=16, vae_steps=2, train_steps=2, batch_size=4,
                             eval_seeds="0,1", inference_steps=2, grid_rows=4, progress=False)
    results = run_filtering_demo(config)
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    for label in ("IP2P on metric-filtered candidates", "IP2P on as many random candidates",
                  "ceiling: ideal edits through the VAE"):
        assert f"| {label} |" in report
    assert "Paired (filtered minus unfiltered" in report and "Time per stage (s)" in report
    assert "| instruction_following:no_change |" in report and "| (no failure) |" in report
    assert (out / "grid.png").stat().st_size > 0

    flt = results["filter"]
    # the default thresholds are quantiles of the reference perfect edits; both training sets equally large
    assert set(flt["thresholds"]) == {"clip_sim_dir", "clip_sim_target", "clip_sim_image"}
    assert results["metrics"]["reference_scored"] == results["encoder"]["held_out_edits"] == 2
    assert flt["filtered"]["examples"] == flt["unfiltered"]["examples"] > 0
    for name in ("filtered", "unfiltered"):
        assert flt["composition"][name]["examples"] == flt["filtered"]["examples"]
    for name, value in flt["thresholds"].items():
        assert f"`{name}` >= {value:g}" in report
    assert 0 <= flt["filtered"]["perfect"]["precision"] <= 1 and 0 <= flt["filtered"]["perfect"]["recall"] <= 1
    assert results["encoder"]["steps"] == 2 and results["metrics"]["scored"] == 40

    assert list(results["scores"]) == ["filtered", "unfiltered", "vae_ceiling"]
    for name, scores in results["scores"].items():
        assert scores["items"] == 4 and scores["missing"] == 0
        assert 0.0 <= scores["following_accuracy"] <= 1.0
        assert list(scores["per_seed_following_accuracy"]) == ["0", "1"]
        assert f"| {scores['judged']}/{scores['rows']} |" in report
    assert results["paired"]["all"]["rows"] == 8
    lines = (out / "eval" / "items.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 4 * 2
    assert json.loads((out / "results.json").read_text())["training"]["filtered"]["steps"] == 2
    capsys.readouterr()

    # a rerun with other thresholds (a quantile over the candidates) reuses data, dataset, encoder, metrics and
    # base model; refilters and retrains
    config.thresholds = "clip_sim_dir=q0.25"
    rerun = run_filtering_demo(config)
    printed = capsys.readouterr().out
    assert len(re.findall(r"done before with the same settings", printed)) == 5
    assert set(rerun["filter"]["thresholds"]) == {"clip_sim_dir"}
    assert rerun["filter"]["filtered"]["examples"] == rerun["filter"]["unfiltered"]["examples"] == 30
    assert len((out / "eval" / "items.jsonl").read_text().splitlines()) == 3 * 4 * 2

    # the same settings again: every stage reused, the evaluation answered from its own results
    run_filtering_demo(config)
    printed = capsys.readouterr().out
    assert len(re.findall(r"done before with the same settings", printed)) >= 8


def test_threshold_settings_are_checked(tmp_path):
    from editforge.errors import UsageError

    for thresholds in ("dinov2_sim=0.4", "clip_sim_dir=q2", "clip_sim_dir=high", ""):
        with pytest.raises(UsageError):
            run_filtering_demo(FilteringConfig(out=str(tmp_path / "x"), thresholds=thresholds, progress=False))
