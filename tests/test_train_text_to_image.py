"""train_text_to_image.py on tiny models: learning, the DDPM loss against a hand computation, exact
resume, the published StableDiffusionPipeline (full and LoRA), captions left out, clear errors."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from editforge.errors import UsageError

CALL = dict(prompt="a red circle at the top left on a gray background", height=32, width=32, num_inference_steps=2,
            output_type="np")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny StableDiffusionPipeline base, a 6-row canonical edit dataset at 32x32 (12 image-caption
    examples by default) and a copy whose first row has no source caption and second a blank target one."""
    from editforge.dataset_builders import build_dataset
    from editforge.dataset_builders.synthetic import write_synthetic_dataset
    from editforge.testing.tiny_models import tiny_text_to_image_pipeline

    root = tmp_path_factory.mktemp("text-to-image")
    tiny_text_to_image_pipeline(seed=0).save_pretrained(root / "base")
    manifest = write_synthetic_dataset(root / "synth", n=6, seed=5, imperfect_rate=0.0, width=32, height=32,
                                       progress=False)
    build_dataset("manifest", manifest, root / "dataset", progress=False)
    table = pq.read_table(next((root / "dataset" / "data").glob("train-*.parquet")))
    source, target = table["source_caption"].to_pylist(), table["target_caption"].to_pylist()
    source[0], target[1] = None, "  "
    for name, values in (("source_caption", source), ("target_caption", target)):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
    (root / "nulls").mkdir()
    pq.write_table(table, root / "nulls" / "train.parquet")
    return root


def args(workspace, out, *extra, steps=4, dataset="dataset"):
    return ["--pretrained_model_name_or_path", str(workspace / "base"), "--dataset_name", str(workspace / dataset),
            "--output_dir", str(out), "--resolution", "32", "--train_batch_size", "4", "--max_train_steps", str(steps),
            "--learning_rate", "1e-3", "--checkpointing_steps", "0", "--num_validation_images", "0", "--no-progress",
            "--report_to", "none", *extra]


@pytest.fixture(scope="module")
def trained(workspace, tmp_path_factory):
    """30 full fine-tuning steps on a fixed batch (2 rows: 4 examples, batch 4), with a validation grid."""
    from editforge.training.train_text_to_image import main

    out = tmp_path_factory.mktemp("trained") / "run"
    argv = args(workspace, out, "--max_train_samples", "2", "--num_validation_images", "2",
                "--validation_inference_steps", "2", steps=30)
    return out, main(argv, keep_pipeline=True)


def test_the_loss_falls_on_a_fixed_batch(trained):
    out, summary = trained
    losses = [summary["losses"][s] for s in sorted(summary["losses"])]
    assert len(losses) == 30 and summary["examples"] == 4 and summary["left_out"] == 0
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8]), losses
    from PIL import Image

    grid = Image.open(out / "validation" / "step-000030.png")  # the last validation
    assert grid.size == (64, 64)  # two captions, each row: the data's image | the model's image for it


@pytest.mark.parametrize("prediction_type, caption_dropout", [("epsilon", 0.0), ("v_prediction", 0.0), ("epsilon", 0.99)])
def test_the_first_loss_is_the_ddpm_objective_computed_by_hand(workspace, tmp_path, prediction_type, caption_dropout):
    """One example (row 0's source image and caption), one step: the image's VAE latents sampled and
    scaled, noise and a timestep drawn from the step's generator, the scheduler's noising, the UNet's
    prediction given the caption's CLIP hidden states (the empty caption's when the next draw falls
    under --caption_dropout_prob), and the MSE to the noise (or velocity)."""
    from datasets import load_dataset
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from editforge.training.core import step_generator
    from editforge.training.train_text_to_image import main

    summary = main(args(workspace, tmp_path / "run", "--columns", "source_image:source_caption", "--max_train_samples",
                        "1", "--train_batch_size", "1", "--center_crop", "--seed", "3",
                        "--prediction_type", prediction_type, "--caption_dropout_prob", str(caption_dropout), steps=1))
    base = workspace / "base"
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler", prediction_type=prediction_type)
    row = load_dataset(str(workspace / "dataset"), split="train")[0]
    pixels = torch.from_numpy(np.asarray(row["source_image"].convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
    generator = step_generator(3, 0, 0)
    with torch.no_grad():
        latents = vae.encode(pixels.permute(2, 0, 1)[None]).latent_dist.sample(generator) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=generator)
        dropped = caption_dropout > 0 and bool(torch.rand(1, generator=generator) < caption_dropout)
        ids = tokenizer(["" if dropped else row["source_caption"]], padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        assert dropped == (caption_dropout > 0)  # the draw for 0.99, this seed
        prediction = unet(scheduler.add_noise(latents, noise, t), t, text_encoder(ids)[0]).sample
        target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        expected = torch.nn.functional.mse_loss(prediction, target).item()
    assert summary["losses"][1] == pytest.approx(expected, rel=1e-5, abs=0)


@pytest.mark.parametrize("full", [True, False])
def test_resume_gives_the_same_losses(workspace, tmp_path, full):
    """Stopped at step 2 (mid-epoch: 12 examples, batch 4) and resumed, the run computes the losses of
    one that never stopped, bit for bit."""
    from editforge.training.train_text_to_image import main

    mode = [] if full else ["--no-full", "--rank", "4", "--learning_rate", "5e-2"]
    straight = main(args(workspace, tmp_path / "a", *mode, "--checkpointing_steps", "2", steps=4))
    main(args(workspace, tmp_path / "b", *mode, "--checkpointing_steps", "2", steps=2))
    assert (tmp_path / "b" / "checkpoint-2").is_dir()
    resumed = main(args(workspace, tmp_path / "b", *mode, "--checkpointing_steps", "2", "--resume_from_checkpoint",
                        "latest", steps=4))
    assert resumed["resumed_from"] == 2
    assert resumed["losses"] == {s: straight["losses"][s] for s in (3, 4)}


def test_the_output_is_a_published_stable_diffusion_pipeline(trained):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    out, summary = trained
    loaded = DiffusionPipeline.from_pretrained(out)
    assert type(loaded) is StableDiffusionPipeline
    image = StableDiffusionPipeline.from_pretrained(out)(**CALL, generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3)
    expected = summary["pipeline"](**CALL, generator=torch.Generator().manual_seed(0)).images
    assert abs(image - expected).max() == 0.0  # the trained UNet, not the base one
    weights = [p.name for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".safetensors")]
    assert weights and all(name.endswith(".safetensors") for name in weights)
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-to-image" in card and "train_text_to_image.py" in card
    assert "| dataset | local folder 'dataset' |" in card and "| training examples | 4 |" in card
    assert "| UNet | full fine-tune |" in card and "| objective | DDPM, epsilon |" in card


def test_a_lora_run_ships_the_base_unet_and_a_lora_file_that_reproduces_it(workspace, tmp_path):
    from diffusers import DiffusionPipeline
    from safetensors import safe_open

    from editforge.training.lora import LORA_WEIGHT_NAME
    from editforge.training.train_text_to_image import main

    summary = main(args(workspace, tmp_path / "run", "--no-full", "--rank", "4", "--learning_rate", "5e-2", steps=2),
                   keep_pipeline=True)
    with safe_open(tmp_path / "run" / LORA_WEIGHT_NAME, "pt") as handle:
        assert all("lora" in key for key in handle.keys())
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "run")
    before = loaded(**CALL, generator=torch.Generator().manual_seed(0)).images
    loaded.load_lora_weights(tmp_path / "run", weight_name=LORA_WEIGHT_NAME)
    after = loaded(**CALL, generator=torch.Generator().manual_seed(0)).images
    expected = summary["pipeline"](**CALL, generator=torch.Generator().manual_seed(0)).images
    assert abs(after - expected).max() == 0.0 and abs(before - expected).max() > 0.0
    assert "LoRA rank 4" in (tmp_path / "run" / "README.md").read_text()


def test_rows_without_a_caption_leave_their_image_out_and_are_counted(workspace, tmp_path):
    from datasets import load_dataset

    from editforge.training.train_text_to_image import DEFAULT_COLUMNS, caption_entries, parse_columns

    dataset = load_dataset(str(workspace / "nulls"), split="train")
    entries, left_out = caption_entries(dataset, parse_columns(DEFAULT_COLUMNS))
    assert left_out == 2 and len(entries) == 10
    assert (0, "source_image", dataset[0]["source_caption"]) not in entries and entries[0][:2] == (0, "edited_image")
    assert all(caption.strip() for _, _, caption in entries)

    from editforge.training.train_text_to_image import main

    summary = main(args(workspace, tmp_path / "run", steps=1, dataset="nulls"))
    assert summary["examples"] == 10 and summary["left_out"] == 2
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| left out | 2 images left out: caption null or blank |" in card and "| dataset rows | 6 |" in card


def test_bad_columns_and_bases_are_refused_clearly(workspace, tmp_path):
    from editforge.testing.tiny_models import tiny_instruct_pix2pix_pipeline
    from editforge.training.train_text_to_image import main

    with pytest.raises(UsageError, match=r"has no column 'image' \(--columns image:caption\); its columns: id, source_image"):
        main(args(workspace, tmp_path / "x", "--columns", "image:caption"))
    with pytest.raises(UsageError, match="has no column 'text'.*its columns: .*edited_image, mask_image, instruction"):
        main(args(workspace, tmp_path / "x", "--columns", "source_image:source_caption,edited_image:text"))
    with pytest.raises(UsageError, match="--caption_dropout_prob out of range 0..1: 1.0"):
        main(args(workspace, tmp_path / "x", "--caption_dropout_prob", "1"))
    with pytest.raises(UsageError, match="--columns takes IMAGE:CAPTION pairs separated by commas, got 'source_image'"):
        main(args(workspace, tmp_path / "x", "--columns", "source_image"))
    with pytest.raises(UsageError, match="column 'instruction' of .* not images"):
        main(args(workspace, tmp_path / "x", "--columns", "instruction:source_caption"))
    tiny_instruct_pix2pix_pipeline().save_pretrained(tmp_path / "ip2p")
    with pytest.raises(UsageError, match="8 input channels.*starts from a StableDiffusionPipeline"):
        main(args(workspace, tmp_path / "x", "--pretrained_model_name_or_path", str(tmp_path / "ip2p")))


def test_cached_latents_train_as_encoding_every_step(workspace, tmp_path, monkeypatch):
    """--cache_latents encodes every image once (the VAE's mode): with the per-step encoding drawing
    the mode too, the losses are the same; with --cache_latent_distribution they are the per-step
    encoding's as it is (the same draws)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from editforge.training.train_text_to_image import main

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


def test_the_spec_is_chosen_by_name_and_stock_detection_is_unchanged():
    from editforge.publishing import detect_spec, get_spec, stock_alternatives

    spec = get_spec("text_to_image")
    assert (spec.pipeline_class, spec.pipeline_tag, spec.auto_detect) == ("StableDiffusionPipeline", "text-to-image", False)
    assert detect_spec("StableDiffusionPipeline").name == "diffusion_dpo"
    assert [s.name for s in stock_alternatives("StableDiffusionPipeline")] == ["diffusion_dpo", "text_to_image"]


def test_editforge_train_text_to_image_help_lists_the_flags(capsys, monkeypatch):
    from editforge import cli

    monkeypatch.setenv("COLUMNS", "300")  # argparse wraps help text to the terminal's width
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "text-to-image", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--pretrained_model_name_or_path", "--dataset_name", "--columns", "--full, --no-full", "--rank",
                 "--snr_gamma", "--prediction_type", "--cache_latents", "--resume_from_checkpoint"):
        assert flag in text, flag
    assert "source_image:source_caption,edited_image:target_caption" in text


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_the_text_encoder_is_trained_only_when_asked(workspace, tmp_path, train_text_encoder):
    """--train_text_encoder trains it with the UNet (and publishes it); without, the published one is the base's."""
    from transformers import CLIPTextModel

    from editforge.training.train_text_to_image import main

    flag = "--train_text_encoder" if train_text_encoder else "--no-train_text_encoder"
    main(args(workspace, tmp_path / "run", flag, steps=3))
    base = CLIPTextModel.from_pretrained(workspace / "base", subfolder="text_encoder").state_dict()
    trained = CLIPTextModel.from_pretrained(tmp_path / "run", subfolder="text_encoder").state_dict()
    changed = [k for k in base if not torch.equal(base[k], trained[k])]
    assert bool(changed) == train_text_encoder
    card = (tmp_path / "run" / "README.md").read_text()
    assert f"| text encoder | {'trained' if train_text_encoder else 'frozen'} |" in card
