"""train_sd3_pix2pix.py on tiny SD3 models: learning, exact resume, the published output, dropout, widening."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from editforge.errors import UsageError

CALL = dict(num_inference_steps=2, guidance_scale=2.0, image_guidance_scale=1.5, output_type="np")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny text-to-image SD3 base (16 channels), a 32-channel editing checkpoint and a 12-example
    synthetic dataset of local edits (some rows with masks, some free-form)."""
    from editforge.dataset_builders import build_dataset
    from editforge.dataset_builders.synthetic import write_synthetic_dataset
    from editforge.testing.tiny_models import tiny_sd3_instruct_pix2pix_pipeline, tiny_sd3_pipeline

    root = tmp_path_factory.mktemp("sd3-training")
    tiny_sd3_pipeline(seed=0).save_pretrained(root / "base")
    tiny_sd3_instruct_pix2pix_pipeline(seed=0, with_mask=False).save_pretrained(root / "edit32")
    manifest = write_synthetic_dataset(root / "synth", n=12, seed=5, imperfect_rate=0.0, width=32, height=32,
                                       progress=False)
    build_dataset("manifest", manifest, root / "dataset", progress=False)
    return root


def args(workspace, out, *extra, steps=4, base="base"):
    return ["--pretrained_model_name_or_path", str(workspace / base), "--dataset_name", str(workspace / "dataset"),
            "--output_dir", str(out), "--resolution", "32", "--train_batch_size", "4", "--max_train_steps", str(steps),
            "--learning_rate", "1e-3", "--checkpointing_steps", "0", "--num_validation_images", "0", "--no-progress",
            "--report_to", "none", *extra]


def first_row(workspace):
    from datasets import load_dataset

    rows = load_dataset(str(workspace / "dataset"), split="train")
    row = next(r for r in rows if r["mask_image"] is not None)
    return row["source_image"].convert("RGB"), row["mask_image"], row["instruction"]


def test_the_dataset_mixes_region_and_free_form_rows(workspace):
    from datasets import load_dataset

    from editforge.training.data import EditExamples, example_shapes

    rows = load_dataset(str(workspace / "dataset"), split="train")
    masks = rows["mask_image"]
    assert any(m is None for m in masks) and any(m is not None for m in masks)
    examples = EditExamples(rows, example_shapes(rows, 32, False), with_mask=True)
    free = examples[[i for i, m in enumerate(masks) if m is None][0]]
    assert free["mask"].shape == (3, 32, 32) and bool((free["mask"] == 1).all())  # all white: edit everywhere
    assert "mask" not in EditExamples(rows, example_shapes(rows, 32, False))[0]  # opt-in: other trainers unchanged


def test_loss_falls_on_a_fixed_batch(workspace, tmp_path):
    from editforge.training.train_sd3_pix2pix import main

    # four examples, batch of four: every step sees the same batch (measured: the last 20 steps' mean is
    # 0.90 of the first 20's; the tiny transformer learns slowly)
    summary = main(args(workspace, tmp_path / "run", "--with_mask", "--max_train_samples", "4", "--full",
                        "--learning_rate", "1e-2", "--conditioning_dropout_prob", "0", steps=100))
    losses = [summary["losses"][s] for s in sorted(summary["losses"])]
    assert len(losses) == 100
    assert np.mean(losses[-20:]) < 0.95 * np.mean(losses[:20]), losses


def test_resume_from_a_checkpoint_gives_the_same_losses_bit_for_bit(workspace, tmp_path):
    from editforge.training.train_sd3_pix2pix import PATCH_EMBEDDING_FILE, main

    common = ("--with_mask", "--learning_rate", "1e-2", "--conditioning_dropout_prob", "0.2")
    straight = main(args(workspace, tmp_path / "a", *common, steps=4))["losses"]
    first = main(args(workspace, tmp_path / "b", *common, "--checkpointing_steps", "2", steps=2))["losses"]
    assert (tmp_path / "b" / "checkpoint-2" / PATCH_EMBEDDING_FILE).is_file()
    resumed = main(args(workspace, tmp_path / "b", *common, "--resume_from_checkpoint", "latest", steps=4))["losses"]
    assert first == {s: straight[s] for s in (1, 2)}
    assert resumed == {s: straight[s] for s in (3, 4)}


@pytest.mark.parametrize("normalization", ["unscaled", "scaled_shifted"])
def test_saved_lora_and_patch_embedding_reproduce_the_trained_model(workspace, tmp_path, normalization):
    from diffusers import DiffusionPipeline
    from safetensors import safe_open
    from safetensors.torch import load_file

    from editforge.pipelines import StableDiffusion3InstructPix2PixPipeline, widen_patch_embedding
    from editforge.training.lora import LORA_WEIGHT_NAME
    from editforge.training.train_sd3_pix2pix import PATCH_EMBEDDING_FILE, main

    out = tmp_path / "run"
    summary = main(args(workspace, out, "--with_mask", "--learning_rate", "5e-2", "--image_latents_normalization",
                        normalization, steps=3), keep_pipeline=True)
    trained = summary["pipeline"]
    assert json.loads((out / "model_index.json").read_text())["image_latents_normalization"] == normalization
    assert trained.transformer.pos_embed.proj.weight[:, 16:].abs().sum() > 0  # the new channels trained
    with safe_open(str(out / LORA_WEIGHT_NAME), "pt") as handle:
        assert all("lora" in k for k in handle.keys())
    assert sorted(load_file(str(out / PATCH_EMBEDDING_FILE))) == ["bias", "weight"]
    card = (out / "README.md").read_text()
    assert "patch embedding" in card and f"**Other weights:** `{PATCH_EMBEDDING_FILE}`" in card  # shipped by publish_pipeline

    source, mask, instruction = first_row(workspace)
    call = dict(CALL, prompt=instruction, image=source, mask_image=mask)
    expected = trained(**call, generator=torch.Generator().manual_seed(0)).images
    # 1. the published folder: the transformer carries the patch embedding, the LoRA goes on top
    published = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    published.load_lora_weights(out, weight_name=LORA_WEIGHT_NAME)
    assert abs(published(**call, generator=torch.Generator().manual_seed(0)).images - expected).max() == 0.0
    # 2. the adapter on a fresh copy of the text-to-image base: widen, patch embedding file, LoRA
    fresh = StableDiffusion3InstructPix2PixPipeline.from_pretrained(workspace / "base",
                                                                    image_latents_normalization=normalization)
    widen_patch_embedding(fresh.transformer, 48)
    fresh.transformer.pos_embed.proj.load_state_dict(load_file(str(out / PATCH_EMBEDDING_FILE)))
    fresh.load_lora_weights(out, weight_name=LORA_WEIGHT_NAME)
    fresh.set_progress_bar_config(disable=True)
    assert abs(fresh(**call, generator=torch.Generator().manual_seed(0)).images - expected).max() == 0.0
    untrained = StableDiffusion3InstructPix2PixPipeline.from_pretrained(workspace / "base",
                                                                        image_latents_normalization=normalization)
    widen_patch_embedding(untrained.transformer, 48)
    assert abs(untrained(**call, generator=torch.Generator().manual_seed(0)).images - expected).max() > 1e-3


def test_full_fine_tune_publishes_the_whole_transformer(workspace, tmp_path):
    from diffusers import DiffusionPipeline

    from editforge.training.train_sd3_pix2pix import main

    out = tmp_path / "full"
    trained = main(args(workspace, out, "--full", "--learning_rate", "1e-2", "--num_validation_images", "2",
                        "--validation_steps", "1", "--validation_inference_steps", "2", steps=2),
                   keep_pipeline=True)["pipeline"]
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-000001.png", "step-000002.png"]
    published = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert published.transformer.config.in_channels == 32 and not published.takes_mask
    source, _, instruction = first_row(workspace)
    call = dict(CALL, prompt=instruction, image=source)
    assert abs(published(**call, generator=torch.Generator().manual_seed(1)).images
               - trained(**call, generator=torch.Generator().manual_seed(1)).images).max() == 0.0


def test_conditioning_dropout_rates_match_the_flag(workspace, tmp_path):
    from editforge.training.train_sd3_pix2pix import main

    p, steps = 0.2, 60  # 240 draws: a share's standard deviation is about 0.026
    logs = main(args(workspace, tmp_path / "drop", "--with_mask", "--conditioning_dropout_prob", str(p),
                     steps=steps))["logs"]
    for name in ("text_only_dropped", "image_only_dropped", "both_dropped"):
        share = np.mean([logs[s][name] for s in logs])
        assert abs(share - p) < 0.09, (name, share)
    none = main(args(workspace, tmp_path / "none", "--conditioning_dropout_prob", "0", steps=3))["logs"]
    assert all(v == 0.0 for s in none for v in none[s].values())


def test_widening_a_text_to_image_base_gives_the_base_model(workspace, tmp_path):
    from editforge.testing.tiny_models import tiny_sd3_pipeline
    from editforge.training.train_sd3_pix2pix import SD3Pix2PixConfig, load_base

    for with_mask, width in ((False, 32), (True, 48)):
        config = SD3Pix2PixConfig(pretrained_model_name_or_path=str(workspace / "base"), dataset_name="d",
                                  with_mask=with_mask)
        pipe = load_base(config)
        assert pipe.transformer.config.in_channels == width and pipe.config.image_latents_normalization == "unscaled"
        base = tiny_sd3_pipeline(seed=0)  # the weights saved as the base folder
        source, mask, instruction = first_row(workspace)
        # latents: "unscaled" decodes without shift_factor by design (tests/test_sd3_pix2pix_pipeline.py)
        text = dict(prompt=instruction, num_inference_steps=2, guidance_scale=2.0, output_type="latent")
        expected = base(**text, height=32, width=32, generator=torch.Generator().manual_seed(0)).images
        edited = pipe(**text, image=source, image_guidance_scale=3.0, mask_image=mask if with_mask else None,
                      generator=torch.Generator().manual_seed(0)).images
        assert edited.shape == (1, 16, 16, 16) and (edited - expected).abs().max().item() <= 1e-5


def test_bad_settings_are_refused_clearly(workspace, tmp_path):
    from editforge.pipelines.pipeline_sd3_instruct_pix2pix import IMAGE_LATENTS_NORMALIZATIONS
    from editforge.training.train_sd3_pix2pix import NORMALIZATIONS, main

    assert NORMALIZATIONS == IMAGE_LATENTS_NORMALIZATIONS
    with pytest.raises(UsageError, match="--image_latents_normalization must be one of unscaled, scaled_shifted"):
        main(args(workspace, tmp_path / "x", "--image_latents_normalization", "scaled"))
    with pytest.raises(UsageError, match="takes no mask \\(32 channels\\): train it without --with_mask"):
        main(args(workspace, tmp_path / "x", "--with_mask", base="edit32"))
    with pytest.raises(UsageError, match="trained with --image_latents_normalization unscaled"):
        main(args(workspace, tmp_path / "x", "--image_latents_normalization", "scaled_shifted", base="edit32"))
    with pytest.raises(UsageError, match="cannot load the base model"):
        main(args(workspace, tmp_path / "x", base="missing"))


def test_an_editing_checkpoint_keeps_its_width_and_the_cli_runs_it(workspace, tmp_path):
    from editforge.cli import main as cli

    out = tmp_path / "cli"
    assert cli(["train", "sd3-pix2pix", *args(workspace, out, steps=1, base="edit32")]) == 0
    assert json.loads((out / "transformer" / "config.json").read_text())["in_channels"] == 32
    assert Path(out / "pytorch_lora_weights.safetensors").is_file()


def test_aspect_ratio_buckets_keep_a_wide_image_wide(tmp_path, workspace):
    from editforge.dataset_builders import build_dataset
    from editforge.dataset_builders.synthetic import write_synthetic_dataset
    from editforge.training.train_sd3_pix2pix import main

    manifest = write_synthetic_dataset(tmp_path / "synth", n=4, seed=2, imperfect_rate=0.0, width=64, height=32,
                                       progress=False)
    build_dataset("manifest", manifest, tmp_path / "wide", progress=False)
    argv = args(workspace, tmp_path / "run", "--with_mask", "--aspect_ratio_buckets", "--train_batch_size", "2", steps=2)
    argv[argv.index("--dataset_name") + 1] = str(tmp_path / "wide")
    from editforge.training.data import example_shapes, load_edit_dataset

    assert set(example_shapes(load_edit_dataset(str(tmp_path / "wide")), 32, True)) == {(64, 32)}
    losses = main(argv)["losses"]
    assert sorted(losses) == [1, 2] and all(np.isfinite(v) for v in losses.values())


SCRIPT = Path(__file__).resolve().parents[1] / "training" / "train_sd3_pix2pix.py"


def test_two_processes_under_torchrun_write_one_output(workspace, tmp_path):
    from torchrun import run_torchrun

    out = tmp_path / "ddp"
    result = run_torchrun([str(SCRIPT), *args(workspace, out, "--with_mask", "--checkpointing_steps", "2",
                                               "--train_batch_size", "2", steps=2)])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["num_processes"] == 2
    assert (out / "patch_embedding.safetensors").is_file() and (out / "checkpoint-2" / "patch_embedding.safetensors").is_file()
    assert not list(out.glob(".final-*"))


def test_the_script_reports_a_bad_setting_in_one_line(workspace, tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(SCRIPT), *args(workspace, tmp_path / "x", "--with_mask", base="edit32")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train_sd3_pix2pix.py: error: the editing checkpoint" in result.stderr


@pytest.mark.parametrize("normalization", ["unscaled", "scaled_shifted"])
def test_cached_latents_train_as_the_pipeline_encodes(workspace, tmp_path, monkeypatch, normalization):
    """With the target drawn as the VAE's mode (as cached), cached and uncached runs compute the same losses:
    the cached condition latents are normalised exactly as the pipeline's encode_condition_image does. With
    --cache_latent_distribution the target is drawn from the cached distribution as the VAE draws it."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from editforge.training.train_sd3_pix2pix import main

    common = ("--with_mask", "--image_latents_normalization", normalization, "--conditioning_dropout_prob", "0.2")
    if normalization == "scaled_shifted":  # --cache_latent_distribution: the per-step encoding's draws, as they are
        drawn = main(args(workspace, tmp_path / "drawn", *common, "--cache_latents", "--cache_latent_distribution",
                          steps=3))["losses"]
        sampled = main(args(workspace, tmp_path / "sampled", *common, steps=3))["losses"]
        assert sorted(drawn) == [1, 2, 3]
        assert all(abs(drawn[s] - sampled[s]) <= 1e-5 * abs(sampled[s]) for s in drawn), (drawn, sampled)
    cached = main(args(workspace, tmp_path / "cached", *common, "--cache_latents", steps=3))["losses"]
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    uncached = main(args(workspace, tmp_path / "plain", *common, steps=3))["losses"]
    assert sorted(cached) == [1, 2, 3]
    assert all(abs(cached[s] - uncached[s]) <= 1e-5 * abs(uncached[s]) for s in cached), (cached, uncached)


def test_cached_text_embeddings_train_as_encoding_every_step(workspace, tmp_path):
    from editforge.training.train_sd3_pix2pix import main

    common = ("--with_mask", "--conditioning_dropout_prob", "0.2")
    cached = main(args(workspace, tmp_path / "cached", *common, "--cache_text_embeddings", steps=3))["losses"]
    plain = main(args(workspace, tmp_path / "plain", *common, steps=3))["losses"]
    assert sorted(cached) == [1, 2, 3]
    assert all(abs(cached[s] - plain[s]) <= 1e-5 * abs(plain[s]) for s in cached), (cached, plain)


def test_an_ultraedit_release_built_by_build_dataset_trains_with_masks(tmp_path, workspace):
    """UltraEdit's free-form and region shards, as build-dataset --format ultraedit writes them: region
    rows bring their mask, free-form rows an all-white one, and the model trains on both."""
    from source_layouts import write_ultraedit

    from editforge.dataset_builders import build_dataset
    from editforge.training.data import EditExamples, example_shapes, load_edit_dataset
    from editforge.training.train_sd3_pix2pix import main

    write_ultraedit(tmp_path / "UltraEdit", n_free=2, n_region=2)
    build_dataset("ultraedit", tmp_path / "UltraEdit", tmp_path / "built", progress=False)
    dataset = load_edit_dataset(str(tmp_path / "built"))
    examples = EditExamples(dataset, example_shapes(dataset, 32, False), with_mask=True)
    for i, row in enumerate(dataset):
        mask = examples[i]["mask"]
        if row["task"] == "free_form":
            assert bool((mask == 1).all())
        else:
            assert 0 < float((mask > 0).float().mean()) < 1  # the region, not everywhere
    argv = args(workspace, tmp_path / "run", "--with_mask", "--train_batch_size", "2", steps=2)
    argv[argv.index("--dataset_name") + 1] = str(tmp_path / "built")
    losses = main(argv)["losses"]
    assert sorted(losses) == [1, 2] and all(np.isfinite(v) for v in losses.values())


def test_validation_grids_of_a_mask_model_show_the_mask_it_was_given(workspace, tmp_path):
    """Each row: source, mask (white for a free-form row), and the edit the pipeline makes with that mask."""
    from datasets import load_dataset
    from PIL import Image

    from editforge.training.data import fit
    from editforge.training.train_sd3_pix2pix import main

    n = 4
    out = tmp_path / "masked"
    trained = main(args(workspace, out, "--full", "--with_mask", "--num_validation_images", str(n),
                        "--validation_steps", "0", "--validation_inference_steps", "2", steps=1),
                   keep_pipeline=True)["pipeline"]
    grid = np.asarray(Image.open(out / "validation" / "step-000001.png"))
    assert grid.shape == (32 * n, 32 * 3, 3)
    rows = load_dataset(str(workspace / "dataset"), split="train")
    assert any(rows[i]["mask_image"] is None for i in range(n)) and any(rows[i]["mask_image"] is not None for i in range(n))
    for i in range(n):
        row = rows[i]
        (source,) = fit([row["source_image"].convert("RGB")], 32, 32)
        mask = None
        if row["mask_image"] is not None:
            (mask,) = fit([row["mask_image"].convert("L").convert("RGB")], 32, 32)
        tile = grid[32 * i: 32 * (i + 1)]
        assert np.array_equal(tile[:, 32:64], np.asarray(mask) if mask is not None else np.full((32, 32, 3), 255))
        edited = trained(row["instruction"], image=source, mask_image=mask, num_inference_steps=2, guidance_scale=7.0,
                         image_guidance_scale=1.5, generator=torch.Generator().manual_seed(i)).images[0]
        assert np.array_equal(tile[:, 64:], np.asarray(edited))


def test_trained_text_encoders_resume_exactly_and_ship_in_the_published_pipeline(workspace, tmp_path):
    from diffusers import DiffusionPipeline

    from editforge.pipelines import StableDiffusion3InstructPix2PixPipeline
    from editforge.training.train_sd3_pix2pix import TEXT_ENCODERS, main

    common = ("--with_mask", "--train_text_encoder", "--learning_rate", "1e-2", "--conditioning_dropout_prob", "0.2")
    straight = main(args(workspace, tmp_path / "a", *common, steps=4), keep_pipeline=True)
    first = main(args(workspace, tmp_path / "b", *common, "--checkpointing_steps", "2", steps=2))["losses"]
    assert (tmp_path / "b" / "checkpoint-2" / "text_encoder" / "model.safetensors").is_file()
    resumed = main(args(workspace, tmp_path / "b", *common, "--resume_from_checkpoint", "latest", steps=4))["losses"]
    assert first == {s: straight["losses"][s] for s in (1, 2)}
    assert resumed == {s: straight["losses"][s] for s in (3, 4)}

    base = StableDiffusion3InstructPix2PixPipeline.from_pretrained(workspace / "base")
    published = DiffusionPipeline.from_pretrained(tmp_path / "a", trust_remote_code=True)
    trained = straight["pipeline"]
    encoders = [name for name in TEXT_ENCODERS if getattr(base, name, None) is not None]
    assert encoders and "text encoders" in (tmp_path / "a" / "README.md").read_text()
    for name in encoders:  # every encoder trained, and the published one is the trained one
        weights = {k: v for k, v in getattr(published, name).state_dict().items()}
        assert any((weights[k] - v).abs().max() > 0 for k, v in getattr(base, name).state_dict().items()), name
        assert all(torch.equal(weights[k], v) for k, v in getattr(trained, name).state_dict().items()), name
    published.load_lora_weights(tmp_path / "a", weight_name="pytorch_lora_weights.safetensors")
    source, mask, instruction = first_row(workspace)
    call = dict(CALL, prompt=instruction, image=source, mask_image=mask)
    assert abs(published(**call, generator=torch.Generator().manual_seed(0)).images
               - trained(**call, generator=torch.Generator().manual_seed(0)).images).max() == 0.0

    frozen = main(args(workspace, tmp_path / "c", "--with_mask", steps=1), keep_pipeline=True)["pipeline"]
    assert all(torch.equal(frozen.text_encoder.state_dict()[k], v) for k, v in base.text_encoder.state_dict().items())
    with pytest.raises(UsageError, match="--cache_text_embeddings needs frozen text encoders"):
        main(args(workspace, tmp_path / "x", "--train_text_encoder", "--cache_text_embeddings"))


def test_max_sequence_length_sets_the_t5_tokens_the_model_is_trained_with(workspace, tmp_path, monkeypatch):
    import inspect

    from editforge.pipelines import StableDiffusion3InstructPix2PixPipeline
    from editforge.training.train_sd3_pix2pix import SD3Pix2PixConfig, SD3Pix2PixModel, main

    seen, forward = [], SD3Pix2PixModel.forward

    def recording(self, noisy, timesteps, condition, text):
        seen.append(text[0].shape[1])  # the context's tokens: CLIP's, then the T5 ones (zeros without T5)
        return forward(self, noisy, timesteps, condition, text)

    monkeypatch.setattr(SD3Pix2PixModel, "forward", recording)
    out = tmp_path / "short"
    trained = main(args(workspace, out, "--max_sequence_length", "4", steps=2), keep_pipeline=True)["pipeline"]
    clip_tokens = trained.tokenizer.model_max_length
    assert seen == [clip_tokens + 4] * 2
    assert "| max_sequence_length (T5 tokens; sample with the same) | 4 |" in (out / "README.md").read_text()
    seen.clear()
    main(args(workspace, tmp_path / "default", steps=1))
    assert seen == [clip_tokens + 256]
    with pytest.raises(UsageError, match="--max_sequence_length must be at least 1, got 0"):
        main(args(workspace, tmp_path / "x", "--max_sequence_length", "0"))
    # the default is the pipeline's own, so a published model samples as it was trained
    call = inspect.signature(StableDiffusion3InstructPix2PixPipeline.__call__).parameters["max_sequence_length"]
    assert SD3Pix2PixConfig.max_sequence_length == call.default == 256
