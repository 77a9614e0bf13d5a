"""train_diffusion_dpo.py on tiny models: the loss as the papers and diffusers' scripts define it,
cross-validation pairs, ties, logged reward accuracy and margin, exact resume, LoRA output."""

import io
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from editforge.errors import UsageError
from editforge.training.objectives import diffusion_dpo_loss, dpo_logits

COLOURS = [(200, 30, 30), (30, 30, 200), (30, 160, 30), (220, 200, 40), (120, 120, 120), (160, 40, 160)]


def png(colour, size=32):
    image = Image.new("RGB", (size, size), (235, 235, 235))
    image.paste(colour, (8, 8, 24, 24))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny text-to-image base and InstructEngine-style pairs: 4 contrasting pairs (two rows each,
    the same two images, each preferred under its own prompt) and one tied Pick-a-Pic row."""
    from editforge.dataset_builders import build_dataset
    from editforge.testing.tiny_models import tiny_text_to_image_pipeline

    root = tmp_path_factory.mktemp("dpo")
    tiny_text_to_image_pipeline(seed=0).save_pretrained(root / "base")
    rows = []
    for i in range(4):
        a, b = COLOURS[i], COLOURS[i + 1]
        for prompt, label in ((f"a red square {i}", 1.0), (f"a blue square {i}", 0.0)):
            rows.append({"caption": prompt, "jpg_0": png(a), "jpg_1": png(b), "label_0": label,
                         "ranking_id": len(rows), "pair_id": f"pair-{i}"})
    rows.append({"caption": "a grey square", "jpg_0": png(COLOURS[4]), "jpg_1": png(COLOURS[5]), "label_0": 0.5,
                 "ranking_id": len(rows), "pair_id": None})
    (root / "src").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "src" / "train.parquet")
    build_dataset("pickapic", root / "src", root / "pairs", progress=False)
    return root


def args(workspace, out, *extra, steps=3):
    return ["--pretrained_model_name_or_path", str(workspace / "base"), "--dataset_name", str(workspace / "pairs"),
            "--output_dir", str(out), "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", str(steps),
            "--learning_rate", "5e-2", "--checkpointing_steps", "2", "--num_validation_images", "0",
            "--logging_steps", "1", "--no-progress", *extra]


def test_the_loss_is_the_papers_and_both_diffusers_scripts_at_their_own_betas():
    g = torch.Generator().manual_seed(0)
    model_w, model_l, ref_w, ref_l = (torch.rand(8, generator=g) for _ in range(4))
    ours = diffusion_dpo_loss(dpo_logits(model_w, model_l, ref_w, ref_l, beta=5000.0))
    # diffusers research_projects/diffusion_dpo: train_diffusion_dpo.py (SD, beta 2500) and _sdxl.py (beta 5000)
    sd = -torch.nn.functional.logsigmoid(2500.0 * ((ref_w - ref_l) - (model_w - model_l))).mean()
    sdxl = -torch.nn.functional.logsigmoid(-0.5 * 5000.0 * ((model_w - model_l) - (ref_w - ref_l))).mean()
    assert torch.allclose(ours, sd, rtol=1e-6) and torch.allclose(ours, sdxl, rtol=1e-6)


def test_a_tie_is_never_a_win_for_image_0():
    logits = torch.tensor([3.0, -3.0])
    ties = torch.tensor([True, True])
    assert diffusion_dpo_loss(logits[:1], ties[:1]) == diffusion_dpo_loss(logits[1:], ties[1:])  # symmetric
    assert diffusion_dpo_loss(logits[:1]) < diffusion_dpo_loss(logits[1:])  # a counted "win" would not be


def test_cross_validation_pairs_and_ties(workspace):
    from editforge.training.data import contrasting_pairs, load_pair_dataset

    dataset = load_pair_dataset(str(workspace / "pairs"))
    assert len(dataset) == 8 and dataset.info.description == "1 tied pairs left out"
    assert contrasting_pairs(dataset, cross_validation=True) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert contrasting_pairs(dataset, cross_validation=False) == [[0], [2], [4], [6]]
    with_ties = load_pair_dataset(str(workspace / "pairs"), keep_ties=True)
    with pytest.raises(UsageError, match="row 8: cross-validation needs two rows per contrasting pair"):
        contrasting_pairs(with_ties, cross_validation=True)


@pytest.mark.parametrize("alignment", ["cross_validation", "single_pair"])
@pytest.mark.parametrize("full", [False, True])
def test_training_starts_at_log_2_and_logs_reward_accuracy_and_margin(workspace, tmp_path, alignment, full):
    from editforge.training.core import read_metrics
    from editforge.training.train_diffusion_dpo import main

    summary = main(args(workspace, tmp_path / "run", "--alignment", alignment, *(["--full"] if full else []), steps=3))
    # step 1: the model is its reference (LoRA starts at zero; --full keeps a frozen copy), so every
    # margin is 0 and the loss is log 2; then the model moves away from the reference
    assert summary["losses"][1] == pytest.approx(math.log(2), abs=1e-6)
    assert summary["logs"][1]["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert summary["losses"][3] != pytest.approx(math.log(2), abs=1e-4)
    assert all(0.0 <= summary["logs"][s]["reward_accuracy"] <= 1.0 for s in (1, 2, 3))
    assert {"loss", "reward_accuracy", "reward_margin", "lr"} <= set(read_metrics(tmp_path / "run")[3])


def test_a_dpo_step_moves_the_margin_towards_the_preferred_image():
    from editforge.testing.tiny_models import tiny_unet
    from editforge.training.lora import add_lora
    from editforge.training.objectives import weighted_mse
    from editforge.training.train_diffusion_dpo import DPOModel

    unet = tiny_unet(in_channels=4)
    add_lora(unet, rank=4)
    model = DPOModel(unet)
    g = torch.Generator().manual_seed(0)
    noisy, target = torch.randn(8, 4, 8, 8, generator=g), torch.randn(8, 4, 8, 8, generator=g)
    t, hidden = torch.full((8,), 500), torch.randn(8, 16, 32, generator=g)
    optimiser = torch.optim.SGD([p for p in unet.parameters() if p.requires_grad], lr=1e-2)

    def margins():
        w, l = weighted_mse(model(noisy, t, hidden), target).chunk(2)
        ref_w, ref_l = weighted_mse(model.reference_prediction(noisy, t, hidden), target).chunk(2)
        return dpo_logits(w, l, ref_w, ref_l, beta=5000.0)

    with torch.no_grad():
        torch.nn.init.normal_(next(p for n, p in unet.named_parameters() if "lora_B" in n), std=1e-3)
    before = margins()
    diffusion_dpo_loss(before).backward()
    optimiser.step()
    assert margins().mean() > before.detach().mean()  # the winners' error fell relative to the losers'


def test_resume_gives_the_same_losses_and_the_lora_loads_with_load_lora_weights(workspace, tmp_path):
    from diffusers import DiffusionPipeline

    from editforge.training.lora import LORA_WEIGHT_NAME
    from editforge.training.train_diffusion_dpo import main

    straight = main(args(workspace, tmp_path / "a", steps=4), keep_pipeline=True)
    main(args(workspace, tmp_path / "b", steps=2))
    resumed = main(args(workspace, tmp_path / "b", "--resume_from_checkpoint", "latest", steps=4))
    assert resumed["losses"] == {s: straight["losses"][s] for s in (3, 4)}

    loaded = DiffusionPipeline.from_pretrained(tmp_path / "a")
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    loaded.load_lora_weights(tmp_path / "a", weight_name=LORA_WEIGHT_NAME)
    call = dict(prompt="a red square 0", height=32, width=32, num_inference_steps=2, output_type="np")
    expected = straight["pipeline"](**call, generator=torch.Generator().manual_seed(0)).images
    assert abs(loaded(**call, generator=torch.Generator().manual_seed(0)).images - expected).max() == 0.0
    card = (tmp_path / "a" / "README.md").read_text()
    assert "cross_validation" in card and "beta_dpo" in card and "diffusion-dpo" in card


def test_lora_on_the_resnets_convolutions_too_loads_with_load_lora_weights(workspace, tmp_path):
    """--lora_target_modules: the adapter also wraps every resnet's convolutions; the file holds them, and
    load_lora_weights reproduces the trained model's images exactly."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    from editforge.training.lora import LORA_WEIGHT_NAME
    from editforge.training.train_diffusion_dpo import main

    targets = "to_q,to_k,to_v,to_out.0,conv1,conv2"
    trained = main(args(workspace, tmp_path / "a", "--lora_target_modules", targets, steps=2), keep_pipeline=True)
    keys = load_file(tmp_path / "a" / LORA_WEIGHT_NAME)
    assert any(".resnets.0.conv1.lora" in k for k in keys) and any(".attn1.to_q.lora" in k for k in keys)
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "a")
    loaded.load_lora_weights(tmp_path / "a", weight_name=LORA_WEIGHT_NAME)
    call = dict(prompt="a red square 0", height=32, width=32, num_inference_steps=2, output_type="np")
    expected = trained["pipeline"](**call, generator=torch.Generator().manual_seed(0)).images
    assert abs(loaded(**call, generator=torch.Generator().manual_seed(0)).images - expected).max() == 0.0
    with pytest.raises(UsageError, match=r"--lora_target_modules: no module of the UNet2DConditionModel is named "
                                         r"\['conv9'\]"):
        main(args(workspace, tmp_path / "x", "--lora_target_modules", "to_q,conv9"))
    with pytest.raises(UsageError, match="--lora_target_modules names no module: ' , '"):
        main(args(workspace, tmp_path / "x", "--lora_target_modules", " , "))


def test_bad_settings_are_refused_clearly(workspace, tmp_path):
    from editforge.training.train_diffusion_dpo import main

    with pytest.raises(UsageError, match="--alignment must be one of cross_validation, single_pair"):
        main(args(workspace, tmp_path / "x", "--alignment", "both"))
    with pytest.raises(UsageError, match="--beta_dpo must be positive"):
        main(args(workspace, tmp_path / "x", "--beta_dpo", "0"))
    with pytest.raises(UsageError, match="has 8 input channels; Diffusion-DPO starts from a text-to-image model"):
        from editforge.testing.tiny_models import tiny_instruct_pix2pix_pipeline

        tiny_instruct_pix2pix_pipeline().save_pretrained(tmp_path / "ip2p")
        main(args(workspace, tmp_path / "x", "--pretrained_model_name_or_path", str(tmp_path / "ip2p")))


@pytest.fixture(scope="module")
def sdxl_base(tmp_path_factory):
    from editforge.testing.tiny_models import tiny_sdxl_pipeline

    root = tmp_path_factory.mktemp("dpo-sdxl")
    tiny_sdxl_pipeline(seed=0).save_pretrained(root / "base")
    return root / "base"


def test_sdxl_time_ids_are_the_pipelines_own():
    from editforge.testing.tiny_models import tiny_sdxl_pipeline
    from editforge.training.train_diffusion_dpo import sdxl_time_ids

    pipe = tiny_sdxl_pipeline()
    ours = sdxl_time_ids([(48, 64), (32, 32)], [(0, 8), (0, 0)], 32)
    for row, (size, crop) in zip(ours, [((48, 64), (0, 8)), ((32, 32), (0, 0))]):
        theirs = pipe._get_add_time_ids(size, crop, (32, 32), dtype=torch.float32,
                                        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        assert torch.equal(row, theirs[0])


@pytest.mark.parametrize("alignment", ["cross_validation", "single_pair"])
def test_sdxl_trains_from_log_2_and_its_lora_loads_into_the_sdxl_pipeline(workspace, sdxl_base, tmp_path, alignment):
    from diffusers import DiffusionPipeline

    from editforge.training.lora import LORA_WEIGHT_NAME
    from editforge.training.train_diffusion_dpo import main

    argv = args(workspace, tmp_path / "run", "--alignment", alignment, steps=3)
    argv[argv.index("--pretrained_model_name_or_path") + 1] = str(sdxl_base)
    summary = main(argv, keep_pipeline=True)
    assert summary["losses"][1] == pytest.approx(math.log(2), abs=1e-6)  # adapters disabled = the base
    assert summary["losses"][3] != pytest.approx(math.log(2), abs=1e-4)
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "run")
    assert type(loaded).__name__ == "StableDiffusionXLPipeline"
    loaded.load_lora_weights(tmp_path / "run", weight_name=LORA_WEIGHT_NAME)
    call = dict(prompt="a red square 0", height=32, width=32, num_inference_steps=2, output_type="np")
    expected = summary["pipeline"](**call, generator=torch.Generator().manual_seed(0)).images
    assert abs(loaded(**call, generator=torch.Generator().manual_seed(0)).images - expected).max() == 0.0
    assert "stable-diffusion-xl" in (tmp_path / "run" / "README.md").read_text()


def test_cached_latents_train_as_encoding_every_step(workspace, tmp_path, monkeypatch):
    """--cache_latents encodes both images of every pair once (the VAE's mode): with the per-step
    encoding drawing the mode too, the losses are the same; with --cache_latent_distribution they are
    the per-step encoding's as it is (the same draws)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from editforge.training.train_diffusion_dpo import main

    def same(a, b):
        return sorted(a) == [1, 2, 3] and all(abs(a[s] - b[s]) <= 1e-5 * abs(b[s]) for s in a)

    # --cache_latent_distribution: each step draws from the cached distribution, as the VAE's encoding would
    drawn = main(args(workspace, tmp_path / "drawn", "--cache_latents", "--cache_latent_distribution", steps=3))["losses"]
    sampled = main(args(workspace, tmp_path / "sampled", steps=3))["losses"]
    assert same(drawn, sampled), (drawn, sampled)
    cached = main(args(workspace, tmp_path / "cached", "--cache_latents", steps=3))["losses"]
    assert not same(cached, sampled)  # the mode is not a draw
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    plain = main(args(workspace, tmp_path / "plain", steps=3))["losses"]
    assert same(cached, plain), (cached, plain)


@pytest.mark.parametrize("base", ["sd", "sdxl"])
def test_cached_text_embeddings_train_as_encoding_every_step(workspace, sdxl_base, tmp_path, base):
    """--cache_text_embeddings encodes each distinct prompt once (SDXL: both encoders' hidden states and
    the pooled projection): the losses are those of encoding every step."""
    from editforge.training.train_diffusion_dpo import main

    def run(out, *extra):
        argv = args(workspace, out, "--alignment", "cross_validation", *extra, steps=3)
        if base == "sdxl":
            argv[argv.index("--pretrained_model_name_or_path") + 1] = str(sdxl_base)
        return main(argv)["losses"]

    cached, plain = run(tmp_path / "cached", "--cache_text_embeddings"), run(tmp_path / "plain")
    assert sorted(cached) == [1, 2, 3]
    assert all(abs(cached[s] - plain[s]) <= 1e-5 * abs(plain[s]) for s in cached), (cached, plain)
