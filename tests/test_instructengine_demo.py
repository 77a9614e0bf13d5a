"""`editforge demo instructengine` end to end on a miniature budget: every stage runs, the kept pairs are
exactly those InstructEngine's rule passes, both DPO runs train from the same pre-trained model for the
same steps, the base model, both DPO runs and the ceiling are judged on the same prompts and seeds, and a
rerun reuses what was already done.

A model pre-trained for a few steps draws noise, and no pair of noise passes the rule; so that the run
has pairs to train on, the images of every other pair are replaced by their prompts' ideal renderings as
they are made (the rest stay the model's), before the judge sees them."""

import json
import re

import pytest

from editforge.demos.instructengine import InstructEngineConfig, run_instructengine_demo


def tiny(out, **changes):
    settings = dict(train_items=16, vae_steps=2, text_width=32, pretrain_steps=2, pretrain_batch_size=8,
                    per_subtopic=1, axes="content,aesthetics", train_steps=2, batch_size=4, eval_items=6,
                    eval_seeds="0,1", inference_steps=2, grid_rows=4, progress=False)
    return InstructEngineConfig(out=str(out), **{**settings, **changes})


@pytest.fixture
def half_ideal_pairs(monkeypatch):
    """Every other pair's images (by pair id) drawn ideally (``render_prompt``) instead of by the model."""
    from editforge.commands import generate_pairs
    from editforge.dataset_builders.synthetic.alignment import render_prompt
    from editforge.demo import write_image

    make = generate_pairs.PipelineImages.make

    def half_ideal(self, folder, images, done, bar):
        prompts = dict(images)

        def finished(ids):
            for image_id in ids:
                if int(image_id.rsplit("-", 1)[0], 16) % 2 == 0:
                    write_image(self.path(folder, image_id), render_prompt(prompts[image_id], *self.size))
            done(ids)

        make(self, folder, images, finished, bar)

    monkeypatch.setattr(generate_pairs.PipelineImages, "make", half_ideal)


def test_instructengine_demo_runs_end_to_end_and_resumes(tmp_path, capsys, half_ideal_pairs):
    from datasets import load_dataset

    out = tmp_path / "demo"
    config = tiny(out)
    results = run_instructengine_demo(config)
    report = (out / "report.md").read_text()
    for label in ("base (pre-trained, no DPO)", "Diffusion-DPO, single pair",
                  "Diffusion-DPO, cross-validation (InstructEngine)", "ceiling: ideal renderings through the VAE"):
        assert f"| {label} |" in report
    assert re.search(r"\*\*(No measurable difference|aligns better|aligns \*\*worse)", report)
    assert "Per number of shapes asked" in report and "| contrast axis |" in report
    assert (out / "grid.png").stat().st_size > 0
    assert list(results["scores"]) == ["base", "single_pair", "cross_validation", "vae_ceiling"]
    assert set(results["paired"]) == {"single_pair-base", "cross_validation-base", "cross_validation-single_pair"}
    assert results["dataset"]["examples"] == 32
    assert results["prompts"]["pairs"] == 2 * 41 and results["prompts"]["pairs_per_axis"] == {"content": 41,
                                                                                                "aesthetics": 41}
    assert set(results["timings_s"]) >= {"data", "base_model", "pretraining", "prompts", "pairs", "dpo", "evaluation",
                                         "total"}

    # the pairs: four answers each, kept exactly when each image scores higher under its own prompt
    pairs = results["pairs"]
    judged = json.loads((out / "pairs" / "generation.json").read_text())["pairs_judged"]
    assert len(judged) == pairs["pairs"] == 82 and pairs["missing"] == 0 and pairs["answers"] == 4 * 82
    for record in judged:
        a, b = record["scores"]["base_image"], record["scores"]["contrast_image"]
        rule = a["base_prompt"] > a["contrast_prompt"] and b["contrast_prompt"] > b["base_prompt"]
        assert (record["outcome"] == "kept") == rule
    kept = {r["pair_id"] for r in judged if r["outcome"] == "kept"}
    assert 0 < len(kept) == pairs["kept"] < 82 and pairs["kept"] + sum(pairs["dropped"].values()) == 82
    assert sum(sum(c.values()) for c in pairs["per_axis"].values()) == 82
    rows = load_dataset(str(out / "pairs"), split="train")
    assert len(rows) == 2 * len(kept) and set(rows["pair_id"]) == kept
    assert sorted(rows["label_0"]) == [0.0] * len(kept) + [1.0] * len(kept)

    # both DPO runs: LoRA from the same pre-trained model, the same steps; merged for the harness
    for name in ("single_pair", "cross_validation"):
        run = results["training"][name]
        assert run["steps"] == 2 and (out / name / "pytorch_lora_weights.safetensors").is_file()
        assert (out / name / "merged" / "model_index.json").is_file()
        summary = json.loads((out / name / "train_summary.json").read_text())
        assert summary["global_step"] == 2
        assert run["reward_accuracy_last"] is not None
    # the base, both DPO runs and the ceiling on the same prompts and sampling seeds
    lines = [json.loads(line) for line in (out / "eval" / "items.jsonl").read_text().splitlines()]
    assert len(lines) == 4 * 6 * 2
    keys = {m: {(r["item"], r["seed"]) for r in lines if r["model"] == m} for m in results["scores"]}
    assert len({frozenset(k) for k in keys.values()}) == 1 and len(keys["base"]) == 12
    for scores in results["scores"].values():
        assert scores["items"] == 6 and scores["rows"] == 12 and scores["missing"] == 0
        assert set(scores["mean_alignment"]["per_seed"]) == {"0", "1"}
        assert set(scores["per_group"]) <= {"1 shape", "2 shapes", "3 shapes", "4 shapes"}
    assert results["paired"]["cross_validation-single_pair"]["all"]["rows"] == 12
    # what the oracle names, by kind: every phrase of every model's feedback counted once
    from editforge.vocabulary import NO_FAILURE

    for model, kinds in results["mismatches"].items():
        phrases = sum(len(r["answer"]["alignment"]["feedback"].split("; ")) for r in lines
                      if r["model"] == model and r["answer"]["alignment"]["feedback"] != NO_FAILURE)
        assert sum(kinds.values()) == phrases, model
    assert "| model | colour | kind | shape | place | missing | extra | count | background | style |" in report
    # the held-out prompts are the synthetic-prompts suite's, with their own seed
    assert results["held_out_overlap"]["prompts"] == 6
    capsys.readouterr()

    # more DPO steps: the data, base model, pre-training, prompts and pairs are reused; DPO and evaluation rerun
    images = out / "eval" / "images" / "cross_validation" / "seed0"
    made = {path.name: path.stat().st_mtime_ns for path in images.iterdir()}
    config.train_steps = 3
    rerun = run_instructengine_demo(config)
    printed = capsys.readouterr().out
    assert len(re.findall(r"done before with the same settings", printed)) == 6
    assert rerun["pairs"] == pairs and rerun["training"]["single_pair"]["steps"] == 3
    assert sorted(made) == sorted(p.name for p in images.iterdir())
    assert all(made[path.name] != path.stat().st_mtime_ns for path in images.iterdir())

    # the same settings again: every stage reused, the evaluation's images kept
    made = {path.name: path.stat().st_mtime_ns for path in images.iterdir()}
    run_instructengine_demo(config)
    printed = capsys.readouterr().out
    assert len(re.findall(r"done before with the same settings", printed)) == 9
    assert all(made[path.name] == path.stat().st_mtime_ns for path in images.iterdir())


def test_unknown_axes_are_refused(tmp_path):
    from editforge.errors import UsageError

    with pytest.raises(UsageError, match="--axes"):
        run_instructengine_demo(tiny(tmp_path / "x", axes="content,colour"))


def test_the_cli_runs_the_variant(monkeypatch):
    import editforge.demos.instructengine
    from editforge import cli

    calls = []
    monkeypatch.setattr(editforge.demos.instructengine, "run_instructengine_demo", lambda c: calls.append(c))
    assert cli.main(["demo", "instructengine", "--train_steps", "7", "--pretrain_steps", "9", "--no-progress"]) == 0
    (config,) = calls
    assert isinstance(config, InstructEngineConfig)
    assert (config.train_steps, config.pretrain_steps, config.progress, config.out) == (7, 9, False,
                                                                                       "demo_instructengine")


def test_ideal_pair_images_are_the_prompts_renderings_through_the_vae(tmp_path, monkeypatch):
    """--pair_images ideal: both images of every pair are their prompts' ideal renderings through the base
    model's VAE (made elsewhere, outputs:PATH), judged by the same rule; each kept row's preferred image is
    its own prompt's rendering. (An untrained VAE reconstructs nothing that would pass the rule, so the
    round trip is recorded and replaced by the identity.)"""
    import numpy as np
    from datasets import load_dataset

    from editforge.dataset_builders.synthetic.alignment import render_prompt
    from editforge.demos import instructengine
    from editforge.training.autoencoder import tiny_autoencoder

    config = tiny(tmp_path, pair_images="ideal", axes="content")
    tiny_autoencoder(block_out_channels=(8, 16), seed=0).save_pretrained(tmp_path / instructengine.BASE / "vae")
    through = []
    monkeypatch.setattr(instructengine, "through_vae",
                        lambda vae, image: through.append(vae.config.block_out_channels) or np.asarray(image))
    instructengine._make_prompts(config, tmp_path)
    pairs = instructengine._make_pairs(config, tmp_path, tmp_path / "prompts")
    assert through == [[8, 16]] * 82  # both images of the 41 pairs, through the base model's VAE
    assert pairs["pairs"] == 41 and pairs["images_made"] == 82 and pairs["missing"] == 0
    assert 0 < pairs["kept"] <= 41
    rows = load_dataset(str(tmp_path / "pairs"), split="train")
    assert len(rows) == 2 * pairs["kept"]
    for row in rows:
        preferred = row["image_0"] if row["label_0"] == 1.0 else row["image_1"]
        expected = render_prompt(row["prompt"], config.size, config.size)
        assert np.array_equal(np.asarray(preferred.convert("RGB")), np.asarray(expected))


def test_unknown_pair_images_are_refused(tmp_path):
    from editforge.errors import UsageError

    with pytest.raises(UsageError, match="--pair_images must be one of model, ideal, got 'oracle'"):
        run_instructengine_demo(tiny(tmp_path / "x", pair_images="oracle"))
    assert not (tmp_path / "x").exists()
