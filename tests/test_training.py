"""train_reward_pix2pix.py on tiny models: learning, saving/loading, resuming, two processes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from editforge.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "train_reward_pix2pix.py"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny InstructPix2Pix base folder and a 24-example canonical dataset with rewards."""
    from editforge.dataset_builders import build_dataset
    from editforge.dataset_builders.synthetic import write_synthetic_dataset
    from editforge.testing.tiny_models import tiny_instruct_pix2pix_pipeline

    root = tmp_path_factory.mktemp("training")
    tiny_instruct_pix2pix_pipeline(seed=0).save_pretrained(root / "base")
    manifest = write_synthetic_dataset(root / "synth", n=24, seed=5, imperfect_rate=0.5, width=32, height=32,
                                       progress=False)
    build_dataset("manifest", manifest, root / "dataset", progress=False, rewards_from="ground_truth")
    return root


def args(workspace, out, *extra, steps=4):
    return [
        "--pretrained_model_name_or_path", str(workspace / "base"),
        "--dataset_name", str(workspace / "dataset"),
        "--output_dir", str(out),
        "--resolution", "32", "--train_batch_size", "4", "--max_train_steps", str(steps),
        "--learning_rate", "1e-3", "--checkpointing_steps", "0", "--num_validation_images", "0",
        "--no-progress", *extra,
    ]


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(workspace, tmp_path):
    from editforge.training.train_reward_pix2pix import main

    # four examples, batch of four: every step sees the same batch
    summary = main(args(workspace, tmp_path / "run", "--full", "--max_train_samples", "4",
                        "--conditioning_dropout_prob", "0", "--reward_dropout_prob", "0", steps=40))
    losses = [summary["losses"][s] for s in sorted(summary["losses"])]
    assert len(losses) == 40
    from editforge.training.core import read_metrics

    logged = read_metrics(tmp_path / "run")  # --logging_steps 10 (default): the step's own loss
    assert sorted(logged) == [10, 20, 30, 40] and logged[20]["loss"] == summary["losses"][20]
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses


def test_saved_lora_and_conditioner_reproduce_the_trained_model(workspace, tmp_path):
    from diffusers import DiffusionPipeline
    from PIL import Image

    from editforge.training.lora import LORA_WEIGHT_NAME
    from editforge.training.train_reward_pix2pix import main

    out = tmp_path / "lora-run"
    summary = main(args(workspace, out, "--rank", "4", "--learning_rate", "5e-2", steps=3), keep_pipeline=True)
    trained = summary["pipeline"]
    assert trained.reward_conditioner.proj_out.weight.abs().sum() > 0  # the conditioner did train

    # LoRA in its own file with LoRA keys only; the conditioner is a component folder
    from safetensors import safe_open

    with safe_open(out / LORA_WEIGHT_NAME, "pt") as handle:
        keys = list(handle.keys())
    assert keys and all("lora" in k for k in keys)
    assert (out / "reward_conditioner" / "diffusion_pytorch_model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "reward dropout" in card and "| steps | 3 |" in card

    loaded = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    loaded.load_lora_weights(str(out), weight_name=LORA_WEIGHT_NAME)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))

    def edit(pipe, rewards):
        pipe.set_progress_bar_config(disable=True)
        return pipe("make the background white", image=image, num_inference_steps=3, output_type="np",
                    rewards=rewards, generator=torch.Generator().manual_seed(0)).images

    for rewards in ([5, 5, 5], [1, 4, 2]):
        np.testing.assert_array_equal(edit(trained, rewards), edit(loaded, rewards))


def test_resuming_from_a_checkpoint_gives_the_same_losses(workspace, tmp_path):
    from editforge.training.core import read_metrics
    from editforge.training.train_reward_pix2pix import main

    out = tmp_path / "run"
    common = ["--checkpointing_steps", "3", "--lr_scheduler", "cosine", "--center_crop"]
    uninterrupted = main(args(workspace, out, *common, steps=8))["losses"]  # 6 batches an epoch
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.bin"))  # nothing pickled

    shutil.rmtree(out / "checkpoint-6")  # as if stopped after step 3..5
    resumed = main(args(workspace, out, *common, "--resume_from_checkpoint", "latest", steps=8))
    assert resumed["resumed_from"] == 3
    assert sorted(resumed["losses"]) == [4, 5, 6, 7, 8]
    for step, loss in resumed["losses"].items():
        assert loss == uninterrupted[step], (step, loss, uninterrupted[step])
    assert read_metrics(out)[8]["loss"] == uninterrupted[8]


def test_baseline_is_a_plain_instruct_pix2pix_pipeline(workspace, tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from editforge.training.train_reward_pix2pix import main

    out = tmp_path / "baseline"
    main(args(workspace, out, "--without_rewards", "--full", "--train_text_encoder", "--cache_latents",
              "--prediction_type", "v_prediction", "--snr_gamma", "5", steps=2))
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(out))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert not (out / "reward_conditioner").exists()
    assert "--without_rewards" in (out / "README.md").read_text()


def test_cached_latent_distribution_trains_as_encoding_every_step(workspace, tmp_path):
    """--cache_latents --cache_latent_distribution: the edit's latent is drawn each step from the cached
    distribution (the source's is its mode), exactly as the per-step encoding draws them."""
    from editforge.training.train_reward_pix2pix import main

    drawn = main(args(workspace, tmp_path / "drawn", "--cache_latents", "--cache_latent_distribution", steps=3))["losses"]
    sampled = main(args(workspace, tmp_path / "sampled", steps=3))["losses"]
    assert sorted(drawn) == [1, 2, 3]
    assert all(abs(drawn[s] - sampled[s]) <= 1e-5 * abs(sampled[s]) for s in drawn), (drawn, sampled)


def test_cache_latent_distribution_needs_cache_latents(workspace, tmp_path):
    from editforge.errors import UsageError
    from editforge.training.train_reward_pix2pix import main

    with pytest.raises(UsageError, match="--cache_latent_distribution needs --cache_latents"):
        main(args(workspace, tmp_path / "x", "--cache_latent_distribution"))
    assert not (tmp_path / "x").exists()


def test_conditioner_learning_rate_is_its_own(workspace, tmp_path):
    from safetensors.torch import load_file

    from editforge.training.lora import LORA_WEIGHT_NAME
    from editforge.training.train_reward_pix2pix import main

    out = tmp_path / "rates"
    summary = main(args(workspace, out, "--rank", "4", "--learning_rate", "1e-7", "--conditioner_learning_rate", "1e-2",
                        "--lr_scheduler", "constant", steps=2), keep_pipeline=True)
    # Adam moves each weight by about its learning rate a step; both start at zero
    conditioner_step = summary["pipeline"].reward_conditioner.proj_out.weight.abs().max().item()
    lora_step = max(v.abs().max().item() for k, v in load_file(out / LORA_WEIGHT_NAME).items() if "lora.up" in k)
    assert 5e-3 < conditioner_step < 3e-2, conditioner_step
    assert 0 < lora_step < 1e-6, lora_step
    with pytest.raises(UsageError, match="--conditioner_learning_rate must be positive"):
        main(args(workspace, tmp_path / "x", "--conditioner_learning_rate", "0"))


def test_bad_settings_are_refused_clearly(workspace, tmp_path):
    from editforge.training.train_reward_pix2pix import main

    with pytest.raises(UsageError, match="--resolution must be a multiple of 8"):
        main(args(workspace, tmp_path / "x", "--resolution", "30"))
    with pytest.raises(UsageError, match="--validation_rewards"):
        main(args(workspace, tmp_path / "x", "--validation_rewards", "5,9,5"))
    with pytest.raises(UsageError, match="cannot load dataset"):
        main(args(workspace, tmp_path / "x", "--dataset_name", str(tmp_path / "missing")))
    result = subprocess.run([sys.executable, "-m", "editforge", "train", "reward-pix2pix", "--resolution", "30",
                             "--pretrained_model_name_or_path", "x", "--dataset_name", "y"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--resolution must be a multiple of 8" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_processes_under_torchrun_write_one_output(workspace, tmp_path):
    from torchrun import run_torchrun

    out = tmp_path / "ddp"
    result = run_torchrun([str(SCRIPT), *args(workspace, out, "--checkpointing_steps", "2", "--logging_steps", "1", steps=2)])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["num_processes"] == 2
    assert (out / "model_index.json").is_file() and (out / "checkpoint-2").is_dir()
    assert len(list(out.glob("checkpoint-*"))) == 1 and not list(out.glob(".final-*"))
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]  # logged once, by the main process
