"""`editforge demo region-masks` end to end on a miniature budget: every stage runs, the report shows
both models and the ceiling, the mask model is a 48-style (3x latent channels) published pipeline, the
harness gave it the region masks, and a rerun reuses what was already done."""

import json
import re

import pytest

from editforge.demos.region_masks import RegionMasksConfig, run_region_masks_demo


def tiny(out, **changes):
    return RegionMasksConfig(out=str(out), train_items=16, eval_items=4, vae_steps=2, train_steps=2, batch_size=4,
                             layers=1, eval_seeds="0,1", inference_steps=2, grid_rows=4, progress=False, **changes)


def test_region_masks_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    config = tiny(out)
    results = run_region_masks_demo(config)
    report = (out / "report.md").read_text()
    for label in ("free-form (8 channels: noisy, source)", "mask-conditioned (12 channels: noisy, source, mask)",
                  "ceiling: ideal edits through the VAE"):
        assert f"| {label} |" in report
    assert "Seeds: data 0, held-out 1000, training 0, evaluation sampling 0,1." in report
    assert re.search(r"Following accuracy is \*\*(not\*\* )?equal", report)
    assert "Per task" in report and (out / "grid.png").stat().st_size > 0
    assert results["dataset"]["examples"] == 16 and results["dataset"]["with_mask"] == 16
    assert list(results["scores"]) == ["free_form", "mask", "vae_ceiling"]
    for scores in results["scores"].values():
        assert scores["items"] == 4 and scores["rows"] == 8 and scores["missing"] == 0
        assert set(scores["following_accuracy"]["per_seed"]) == {"0", "1"}
        assert f"| {scores['judged']}/{scores['rows']} |" in report
        assert set(scores["per_task"]) <= {"attribute_change", "object_removal", "object_addition", "object_swap"}
    for task in results["scores"]["mask"]["per_task"]:
        assert f"| {task} |" in report
    assert results["paired"]["all"]["rows"] == 8
    # both are editforge eval's runs: one line per (model, item, seed)
    lines = [json.loads(line) for line in (out / "eval" / "items.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 4 * 2
    # the two trained models: same steps, one takes masks (3x the latent channels), one does not
    for name, channels in (("free_form", 8), ("mask", 12)):
        config_file = json.loads((out / name / "transformer" / "config.json").read_text())
        assert config_file["in_channels"] == channels
        assert results["training"][name]["steps"] == 2
    assert set(results["timings_s"]) >= {"data", "dataset", "vae", "base_model", "training", "evaluation", "total"}
    capsys.readouterr()

    # a rerun with more training steps reuses the data, the VAE and the base model; retrains and re-evaluates
    edits = out / "eval" / "images" / "mask" / "seed0"
    made = {path.name: path.stat().st_mtime_ns for path in edits.iterdir()}
    config.train_steps = 3
    rerun = run_region_masks_demo(config)
    printed = capsys.readouterr().out
    assert len(re.findall(r"done before with the same settings", printed)) == 5  # data, heldout, dataset, vae, base
    assert rerun["training"]["mask"]["steps"] == 3 and rerun["training"]["free_form"]["steps"] == 3
    assert len((out / "eval" / "items.jsonl").read_text().splitlines()) == 24
    assert sorted(made) == sorted(p.name for p in edits.iterdir())
    assert all(made[path.name] != path.stat().st_mtime_ns for path in edits.iterdir())

    # the same settings again: every stage reused, the evaluation's edits kept
    made = {path.name: path.stat().st_mtime_ns for path in edits.iterdir()}
    run_region_masks_demo(config)
    printed = capsys.readouterr().out
    assert len(re.findall(r"done before with the same settings", printed)) == 8
    assert all(made[path.name] == path.stat().st_mtime_ns for path in edits.iterdir())


def test_global_tasks_are_refused(tmp_path):
    from editforge.errors import UsageError

    with pytest.raises(UsageError, match="style_change is global"):
        run_region_masks_demo(tiny(tmp_path / "x", tasks="object_removal,style_change"))


def test_the_cli_runs_the_variant_and_keeps_the_main_demo(monkeypatch):
    import editforge.demo
    import editforge.demos.region_masks
    from editforge import cli

    calls = []
    monkeypatch.setattr(editforge.demos.region_masks, "run_region_masks_demo", lambda c: calls.append(c))
    monkeypatch.setattr(editforge.demo, "run_demo", lambda c: calls.append(c))
    assert cli.main(["demo", "region-masks", "--train_steps", "7", "--layers", "2", "--no-progress"]) == 0
    assert cli.main(["demo", "--train_steps", "9"]) == 0
    variant, main = calls
    assert isinstance(variant, RegionMasksConfig) and (variant.train_steps, variant.layers, variant.progress) == (7, 2, False)
    assert variant.out == "demo_region_masks"
    assert isinstance(main, editforge.demo.DemoConfig) and main.train_steps == 9 and main.out == "demo_output"
