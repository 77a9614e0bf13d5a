#!/usr/bin/env python
"""Train InstructPix2Pix with multi-reward conditioning (Multi-Reward as Condition, arXiv 2411.04713).

    accelerate launch training/train_reward_pix2pix.py \\
        --pretrained_model_name_or_path timbrooks/instruct-pix2pix \\
        --dataset_name org/RewardEdit20K --output_dir reward-pix2pix \\
        --resolution 256 --train_batch_size 4 --learning_rate 1e-4 --max_train_steps 10000 --rank 16

(or ``editforge train reward-pix2pix ...`` with the same flags).

It trains a ``RewardConditioner`` fully and the UNet with a LoRA adapter (the whole UNet with
``--full``; the text encoder too with ``--train_text_encoder``), with InstructPix2Pix's
conditioning dropout (text, image, both) and reward dropout: a share of examples get the learned
null reward, which is what lets ``reward_guidance_scale`` steer at inference. With
``--without_rewards`` it trains the plain InstructPix2Pix baseline on the same data and core.

The dataset is any editforge canonical edit dataset (``editforge build-dataset``); rows without
complete rewards are left out of reward-conditioned training, never filled in.

The output folder loads as a pipeline: ``DiffusionPipeline.from_pretrained(out,
trust_remote_code=True)`` (then ``pipe.load_lora_weights(out, weight_name=
"pytorch_lora_weights.safetensors")`` unless ``--full``); the LoRA file holds LoRA keys only, the
conditioner is its own component folder, and README.md lists base model, data, steps and reward
settings.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a file: `accelerate launch training/train_reward_pix2pix.py`
    from editforge.training.config import EditTrainingConfig, help_field, parse_config
    from editforge.training.core import Trainer
else:
    from .config import EditTrainingConfig, help_field, parse_config
    from .core import Trainer

from editforge.errors import UsageError

PERSPECTIVES = ("instruction_following", "detail_preserving", "generation_quality")


@dataclass
class RewardPix2PixConfig(EditTrainingConfig):
    """Flags of train_reward_pix2pix.py."""

    without_rewards: bool = help_field("train the plain InstructPix2Pix baseline (no conditioner)", default=False)
    conditioning_dropout_prob: float = help_field(
        "InstructPix2Pix dropout of the text, of the image, and of both (each)", default=0.05)
    reward_dropout_prob: float = help_field("share of examples given the learned null reward", default=0.1)
    conditioner_learning_rate: float | None = help_field(
        "peak learning rate of the reward conditioner (default: --learning_rate)", default=None)
    score_embed_dim: int = help_field("sinusoidal width of each reward score (the paper: 256)", default=256)
    validation_rewards: str = help_field("target rewards of validation edits (IF,DP,GQ)", default="5,5,5")

    def validate(self) -> None:
        super().validate()
        if self.conditioner_learning_rate is not None and self.conditioner_learning_rate <= 0:
            raise UsageError(f"--conditioner_learning_rate must be positive, got {self.conditioner_learning_rate}")
        for name in ("conditioning_dropout_prob", "reward_dropout_prob"):
            value = getattr(self, name)
            if not 0 <= value <= (1 / 3 if name == "conditioning_dropout_prob" else 1):
                raise UsageError(f"--{name} out of range: {value}")
        try:
            scores = [float(v) for v in self.validation_rewards.split(",")]
        except ValueError:
            scores = []
        if len(scores) != 3 or not all(0 <= s <= 5 for s in scores):
            raise UsageError(f"--validation_rewards must be three scores in 0..5, got {self.validation_rewards!r}")


class RewardPix2PixModel(nn.Module):
    """The trained modules in one place (so data parallelism synchronises all of them):
    UNet, text encoder and, unless training the baseline, the reward conditioner."""

    def __init__(self, unet, text_encoder, null_input_ids: torch.Tensor, conditioner=None):
        super().__init__()
        self.unet, self.text_encoder, self.conditioner = unet, text_encoder, conditioner
        self.register_buffer("null_input_ids", null_input_ids, persistent=False)
        self._frozen_null = None

    def null_text(self) -> torch.Tensor:
        """The empty prompt's hidden states: computed once while the text encoder is frozen."""
        if any(p.requires_grad for p in self.text_encoder.parameters()):
            return self.text_encoder(self.null_input_ids)[0]
        if self._frozen_null is None:
            with torch.no_grad():
                self._frozen_null = self.text_encoder(self.null_input_ids)[0]
        return self._frozen_null

    def forward(self, noisy_latents, timesteps, image_latents, input_ids, text_drop,
                scores=None, feedback_embeds=None, reward_drop=None):
        hidden = self.text_encoder(input_ids)[0]
        if bool(text_drop.any()):
            hidden = torch.where(text_drop[:, None, None], self.null_text().to(hidden.dtype), hidden)
        # contiguous: VAE latents are channel slices, and a non-contiguous input makes the UNet run
        # channels-last, whose GroupNorm backward crashes on CPU when the norm is frozen (LoRA)
        model_input = torch.cat([noisy_latents, image_latents], dim=1).contiguous()
        if self.conditioner is None:
            return self.unet(model_input, timesteps, hidden).sample
        with self.conditioner.conditioning(self.unet, scores, feedback_embeds, reward_drop):
            return self.unet(model_input, timesteps, hidden).sample


def _load_components(config: RewardPix2PixConfig):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = config.pretrained_model_name_or_path
    kwargs = {"revision": config.revision, "cache_dir": config.cache_dir}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs)
        noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
        from diffusers import DiffusionPipeline

        inference_scheduler_config = DiffusionPipeline.load_config(source, **kwargs)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot load the base model {source!r}: {err}") from None
    if unet.config.in_channels != 8:
        raise UsageError(
            f"the base UNet of {source!r} has {unet.config.in_channels} input channels; start from an "
            "InstructPix2Pix model (8 channels: noisy latents + image latents)"
        )
    if config.prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=config.prediction_type)
    return tokenizer, text_encoder, vae, unet, noise_scheduler, inference_scheduler_config


def _inference_scheduler(source: str, config: RewardPix2PixConfig):
    """The base pipeline's own sampler, with the prediction type the model was trained for."""
    import diffusers

    index = diffusers.DiffusionPipeline.load_config(source, revision=config.revision, cache_dir=config.cache_dir)
    scheduler_class = getattr(diffusers, index["scheduler"][1])
    scheduler = scheduler_class.from_pretrained(source, subfolder="scheduler", revision=config.revision, cache_dir=config.cache_dir)
    if config.prediction_type is not None:
        scheduler.register_to_config(prediction_type=config.prediction_type)
    return scheduler


class CachedLatents(torch.utils.data.Dataset):
    """Training examples with their images already encoded by the frozen VAE."""

    def __init__(self, examples, vae, batch_size: int = 32, progress: bool = True):
        from tqdm.auto import tqdm

        self.rows = []
        loader = torch.utils.data.DataLoader(examples, batch_size=1, collate_fn=lambda b: b[0])
        pending = []

        def flush():
            with torch.no_grad():
                source = torch.stack([e["source"] for e in pending]).to(vae.device, vae.dtype)
                edited = torch.stack([e["edited"] for e in pending]).to(vae.device, vae.dtype)
                source_latents = vae.encode(source).latent_dist.mode().float().cpu()
                edited_latents = vae.encode(edited).latent_dist.mode().float().cpu()
            for example, s, e in zip(pending, source_latents, edited_latents):
                row = {k: v for k, v in example.items() if k not in ("source", "edited")}
                self.rows.append({**row, "source_latents": s, "edited_latents": e})
            pending.clear()

        for example in tqdm(loader, desc="encode latents", unit="example", disable=not progress):
            pending.append(example)
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def make_collate(tokenizer, with_rewards: bool):
    if __package__ in (None, ""):
        from editforge.pipelines.reward_conditioner import join_reward_feedback
    else:
        from ..pipelines.reward_conditioner import join_reward_feedback

    def collate(examples):
        batch = {"index": torch.tensor([e["index"] for e in examples])}
        for key in ("source", "edited", "source_latents", "edited_latents"):
            if key in examples[0]:
                batch[key] = torch.stack([e[key] for e in examples])
        batch["input_ids"] = tokenizer(
            [e["instruction"] for e in examples], padding="max_length", max_length=tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids
        if with_rewards:
            batch["scores"] = torch.stack([e["scores"] for e in examples])
            batch["feedback"] = [join_reward_feedback(e["feedback"]) for e in examples]
        return batch

    return collate


def main(argv: list[str] | None = None, keep_pipeline: bool = False) -> dict:
    """Train; return a summary (steps, losses, samples/s, output folder). With ``keep_pipeline``
    the summary also holds the trained pipeline as it is in memory (``"pipeline"``)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from editforge.pipelines import RewardConditionedPix2PixPipeline
    from editforge.pipelines.reward_conditioner import RewardConditioner, encode_reward_feedback
    from editforge.training.data import EditExamples, example_shapes, load_edit_dataset
    from editforge.training.diffusion import diffusion_loss, noise_like, sample_timesteps, target_for
    from editforge.training.lora import LORA_WEIGHT_NAME, add_unet_lora, load_unet_lora, save_unet_lora

    config = argv if isinstance(argv, RewardPix2PixConfig) else parse_config(
        RewardPix2PixConfig, argv, prog="train_reward_pix2pix.py")
    with_rewards = not config.without_rewards
    trainer = Trainer(config, project_name="reward-pix2pix" if with_rewards else "instruct-pix2pix")
    device = trainer.device

    tokenizer, text_encoder, vae, unet, noise_scheduler, _ = _load_components(config)
    prediction_type = noise_scheduler.config.prediction_type
    vae.requires_grad_(False).to(device)
    text_encoder.requires_grad_(config.train_text_encoder)
    if config.full:
        unet.requires_grad_(True)
    else:
        add_unet_lora(unet, config.rank, config.lora_alpha)
    conditioner = None
    if with_rewards:
        torch.manual_seed(config.seed)
        conditioner = RewardConditioner.from_unet(
            unet, feedback_dim=text_encoder.config.hidden_size, score_embed_dim=config.score_embed_dim
        )
    null_ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    model = RewardPix2PixModel(unet, text_encoder, null_ids, conditioner)

    dataset = load_edit_dataset(config.dataset_name, config.dataset_config_name, config.dataset_split,
                                cache_dir=config.cache_dir, max_samples=config.max_train_samples,
                                require_rewards=with_rewards)
    shapes = example_shapes(dataset, config.resolution, config.aspect_ratio_buckets)
    examples = EditExamples(dataset, shapes, center_crop=config.center_crop, seed=config.seed)
    if config.cache_latents:
        examples = CachedLatents(examples, vae, progress=config.progress and trainer.is_main_process)

    def save(model, folder: Path):
        if config.full:
            model.unet.save_pretrained(folder / "unet")
        else:
            save_unet_lora(model.unet, folder)
        if config.train_text_encoder:
            model.text_encoder.save_pretrained(folder / "text_encoder")
        if model.conditioner is not None:
            model.conditioner.save_pretrained(folder / "reward_conditioner")

    def load(model, folder: Path):
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        if config.full:
            model.unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder / "unet").state_dict())
        else:
            load_unet_lora(model.unet, folder)
        if config.train_text_encoder:
            model.text_encoder.load_state_dict(CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict())
        if model.conditioner is not None:
            model.conditioner.load_state_dict(RewardConditioner.from_pretrained(folder / "reward_conditioner").state_dict())

    trainer.register_checkpoint_hooks(save, load)
    rates = {conditioner: config.conditioner_learning_rate} if conditioner is not None and config.conditioner_learning_rate else None
    trainer.prepare(model, examples, shapes, make_collate(tokenizer, with_rewards), learning_rates=rates)
    scaling = vae.config.scaling_factor
    p = config.conditioning_dropout_prob

    def compute_loss(batch, generator):
        with torch.no_grad():
            if "edited_latents" in batch:
                latents, image_latents = batch["edited_latents"] * scaling, batch["source_latents"]
            else:
                latents = vae.encode(batch["edited"].to(device, vae.dtype)).latent_dist.sample(generator) * scaling
                image_latents = vae.encode(batch["source"].to(device, vae.dtype)).latent_dist.mode()
        bsz = latents.shape[0]
        noise = noise_like(latents, generator)
        timesteps = sample_timesteps(noise_scheduler, bsz, generator, device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        # InstructPix2Pix conditioning dropout: text alone, image alone, and both, p each.
        draw = torch.rand(bsz, generator=generator).to(device)
        text_drop = draw < 2 * p
        image_keep = 1.0 - ((draw >= p) & (draw < 3 * p)).float()
        image_latents = image_latents * image_keep[:, None, None, None]
        kwargs = {}
        if with_rewards:
            unwrapped = trainer.unwrap()
            with torch.no_grad():
                feedback = encode_reward_feedback(tokenizer, unwrapped.text_encoder, batch["feedback"])
            kwargs = {
                "scores": batch["scores"].to(device),
                "feedback_embeds": feedback,
                "reward_drop": (torch.rand(bsz, generator=generator) < config.reward_dropout_prob).to(device),
            }
        prediction = trainer.model(noisy, timesteps, image_latents, batch["input_ids"].to(device), text_drop, **kwargs)
        target = target_for(noise_scheduler, latents, noise, timesteps, prediction_type)
        return diffusion_loss(prediction, target, noise_scheduler, timesteps, config.snr_gamma, prediction_type)

    validation_rows = _validation_rows(config, dataset)

    def build_pipeline(unet_for_pipeline=None):
        inner = trainer.unwrap()
        components = dict(
            vae=vae, text_encoder=inner.text_encoder, tokenizer=tokenizer, unet=unet_for_pipeline or inner.unet,
            scheduler=_inference_scheduler(config.pretrained_model_name_or_path, config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        if with_rewards:
            pipe = RewardConditionedPix2PixPipeline(reward_conditioner=inner.conditioner, **components)
        else:
            pipe = StableDiffusionInstructPix2PixPipeline(**components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validate(step: int):
        if trainer.is_main_process and validation_rows:
            _run_validation(config, build_pipeline(), validation_rows, step, trainer, with_rewards)

    result = trainer.train(compute_loss, validate)
    summary = {
        "global_step": result.global_step,
        "losses": result.losses,
        "samples_per_second": result.samples_per_second,
        "seconds": result.seconds,
        "resumed_from": result.resumed_from,
        "num_processes": trainer.accelerator.num_processes,
        "output_dir": str(trainer.output_dir),
    }
    if trainer.is_main_process:
        if validation_rows:
            _run_validation(config, build_pipeline(), validation_rows, result.global_step, trainer, with_rewards)
        _save_final(config, trainer, build_pipeline, with_rewards, result, dataset)
        (trainer.output_dir / "train_summary.json").write_text(
            json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2) + "\n")
        if keep_pipeline:
            summary["pipeline"] = build_pipeline()
        if config.push_to_hub:
            _push(config, trainer.output_dir)
    trainer.end()
    return summary


def _validation_rows(config, dataset):
    if config.num_validation_images <= 0:
        return []
    if config.validation_split:
        from editforge.training.data import load_edit_dataset

        dataset = load_edit_dataset(config.dataset_name, config.dataset_config_name, config.validation_split,
                                    cache_dir=config.cache_dir)
    return [dataset[i] for i in range(min(config.num_validation_images, len(dataset)))]


def _run_validation(config, pipe, rows, step, trainer, with_rewards):
    import numpy as np
    from PIL import Image

    from editforge.training.data import fit

    folder = trainer.output_dir / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    tiles = []
    scores = [float(v) for v in config.validation_rewards.split(",")]
    for i, row in enumerate(rows):
        (source,) = fit([row["source_image"].convert("RGB")], config.resolution, config.resolution)
        kwargs = {"rewards": scores} if with_rewards else {}
        edited = pipe(
            row["instruction"], image=source, num_inference_steps=config.validation_inference_steps,
            guidance_scale=config.validation_guidance_scale, image_guidance_scale=config.validation_image_guidance_scale,
            generator=torch.Generator().manual_seed(config.seed + i), **kwargs,
        ).images[0]
        tiles.append(np.concatenate([np.asarray(source), np.asarray(edited.resize(source.size))], axis=1))
    grid = Image.fromarray(np.concatenate(tiles, axis=0))
    path = folder / f"step-{step:06d}.png"
    grid.save(path)
    for tracker in trainer.accelerator.trackers:
        if tracker.name in ("tensorboard", "wandb"):
            tracker.log_images({"validation": [np.asarray(grid)]}, step=step)
        else:
            tracker.log({"validation_grid": str(path)}, step=step)


def _training_card_fields(config, result, dataset, with_rewards):
    training = {
        "steps": result.global_step,
        "learning rate": config.learning_rate,
        "batch size": f"{config.train_batch_size} x {config.gradient_accumulation_steps} accumulation",
        "resolution": config.resolution,
        "UNet": "full fine-tune" if config.full else f"LoRA rank {config.rank}",
        "text encoder": "trained" if config.train_text_encoder else "frozen",
        "conditioning dropout": config.conditioning_dropout_prob,
        "seed": config.seed,
        "training examples": len(dataset),
    }
    if with_rewards:
        training["reward dropout (null reward)"] = config.reward_dropout_prob
        training["reward score embedding"] = f"sinusoidal, {config.score_embed_dim} per score"
        training["inference rewards"] = config.validation_rewards
    skipped = getattr(dataset.info, "description", "")
    if skipped:
        training["left out"] = skipped
    return training


def _save_final(config, trainer, build_pipeline, with_rewards, result, dataset):
    """Write the final pipeline into the output folder (beside checkpoints and logs)."""
    from editforge.hub import publish_pipeline

    output = trainer.output_dir
    inner = trainer.unwrap()
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=output))
    try:
        lora_file, shipped_unet = None, None
        if not config.full:
            # the pipeline ships the base UNet and the LoRA beside it; the trained one stays as it is
            lora_file = save_unet_lora_to(inner.unet, staging / "lora")
            from diffusers import UNet2DConditionModel

            shipped_unet = UNet2DConditionModel.from_pretrained(
                config.pretrained_model_name_or_path, subfolder="unet", revision=config.revision, cache_dir=config.cache_dir)
        pipe = build_pipeline(shipped_unet)
        fields = dict(
            base_model=config.pretrained_model_name_or_path if "/" in config.pretrained_model_name_or_path
            and not Path(config.pretrained_model_name_or_path).exists() else None,
            datasets=config.dataset_name if "/" in config.dataset_name and not Path(config.dataset_name).exists() else None,
            training=_training_card_fields(config, result, dataset, with_rewards),
        )
        final = staging / "pipeline"
        if with_rewards:
            publish_pipeline(pipe, final, lora_weights=lora_file, repo_id=config.hub_model_id, **fields)
        else:
            _save_plain_pipeline(pipe, final, lora_file, config, fields)
        for entry in final.iterdir():
            target = output / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(entry), str(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_unet_lora_to(unet, folder: Path) -> Path:
    from editforge.training.lora import save_unet_lora

    folder.mkdir(parents=True, exist_ok=True)
    return save_unet_lora(unet, folder)


def _save_plain_pipeline(pipe, folder: Path, lora_file, config, fields):
    from editforge.model_cards import render_model_card

    pipe.save_pretrained(folder)
    if lora_file is not None:
        shutil.copy2(lora_file, folder / lora_file.name)
    card = render_model_card(
        "instruct_pix2pix",
        repo_id=config.hub_model_id or f"<your-name>/{Path(config.output_dir).resolve().name}",
        lora_weight_names=[lora_file.name] if lora_file is not None else [],
        tags=["image-editing", "instruct-pix2pix"],
        license="apache-2.0",
        **fields,
    )
    card.save(folder / "README.md")


def _push(config, output_dir: Path):
    from huggingface_hub import create_repo, upload_folder

    repo_id = config.hub_model_id or output_dir.resolve().name
    create_repo(repo_id, exist_ok=True)
    upload_folder(repo_id=repo_id, folder_path=str(output_dir),
                  ignore_patterns=["checkpoint-*", "checkpoint-*/**", "logs/**", "validation/**", ".final-*"])


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UsageError as err:
        print(f"train_reward_pix2pix.py: error: {err}", file=sys.stderr)
        raise SystemExit(2)
