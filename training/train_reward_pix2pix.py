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
Rows without complete rewards are left out of reward-conditioned training, never filled in.

What is specific to reward conditioning lives here; the loop, data, objective, LoRA, validation
grids and the published output folder are the shared core (``editforge.training``). The output
folder loads with ``DiffusionPipeline.from_pretrained(out, trust_remote_code=True)`` (then
``pipe.load_lora_weights(out, weight_name="pytorch_lora_weights.safetensors")`` unless ``--full``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editforge.errors import UsageError
from editforge.training.config import (DenoisingObjectiveConfig, EditingConfig, TextEncoderTrainingConfig, TrainingConfig,
                                       help_field, parse_config)
from editforge.training.core import Trainer, run_as_script


@dataclass
class RewardPix2PixConfig(EditingConfig, DenoisingObjectiveConfig, TextEncoderTrainingConfig, TrainingConfig):
    """Flags of train_reward_pix2pix.py."""

    without_rewards: bool = help_field("train the plain InstructPix2Pix baseline (no conditioner)", default=False)
    reward_dropout_prob: float = help_field("share of examples given the learned null reward", default=0.1)
    conditioner_learning_rate: float | None = help_field(
        "peak learning rate of the reward conditioner (default: --learning_rate)", default=None)
    score_embed_dim: int = help_field("sinusoidal width of each reward score (the paper: 256)", default=256)
    validation_rewards: str = help_field("target rewards of validation edits (IF,DP,GQ)", default="5,5,5")

    def validate(self) -> None:
        super().validate()
        if self.conditioner_learning_rate is not None and self.conditioner_learning_rate <= 0:
            raise UsageError(f"--conditioner_learning_rate must be positive, got {self.conditioner_learning_rate}")
        if not 0 <= self.reward_dropout_prob <= 1:
            raise UsageError(f"--reward_dropout_prob out of range 0..1: {self.reward_dropout_prob}")
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


def make_collate(tokenizer, with_rewards: bool):
    from editforge.pipelines.reward_conditioner import join_reward_feedback

    def collate(examples):
        batch = {"index": torch.tensor([e["index"] for e in examples])}
        for key in ("source", "edited", "source_latents", "edited_latents"):
            if key in examples[0]:
                batch[key] = torch.stack([e[key] for e in examples])
        batch["input_ids"] = tokenizer([e["instruction"] for e in examples], padding="max_length", truncation=True,
                                       max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        if with_rewards:
            batch["scores"] = torch.stack([e["scores"] for e in examples])
            batch["feedback"] = [join_reward_feedback(e["feedback"]) for e in examples]
        return batch

    return collate


def main(argv: list[str] | RewardPix2PixConfig | None = None, keep_pipeline: bool = False) -> dict:
    """Train; return a summary (steps, losses, samples/s, output folder). With ``keep_pipeline``
    the summary also holds the trained pipeline as it is in memory (``"pipeline"``)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from editforge.pipelines import RewardConditionedPix2PixPipeline
    from editforge.pipelines.reward_conditioner import RewardConditioner, encode_reward_feedback
    from editforge.training import output
    from editforge.training.components import inference_scheduler, load_components
    from editforge.training.data import EditExamples, example_shapes, load_edit_dataset
    from editforge.training.latents import CachedLatents, cached_latents
    from editforge.training.lora import add_lora
    from editforge.training.objectives import diffusion_loss, ip2p_conditioning_dropout, noise_like, sample_timesteps, target_for
    from editforge.training.samplers import ShapeBatchSampler
    from editforge.training.validation import edit_renderer, validation_rows, write_validation_grid

    config = argv if isinstance(argv, RewardPix2PixConfig) else parse_config(RewardPix2PixConfig, argv, prog="train_reward_pix2pix.py")
    with_rewards = not config.without_rewards
    trainer = Trainer(config, project_name="reward-pix2pix" if with_rewards else "instruct-pix2pix")
    device = trainer.device
    parts = load_components(config, {"tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModel, "vae": AutoencoderKL,
                                     "unet": UNet2DConditionModel, "scheduler": DDPMScheduler})
    tokenizer, text_encoder, vae, unet, noise_scheduler = parts.values()
    if unet.config.in_channels != 8:
        raise UsageError(f"the base UNet of {config.pretrained_model_name_or_path!r} has {unet.config.in_channels} input "
                         "channels; start from an InstructPix2Pix model (8 channels: noisy latents + image latents)")
    if config.prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=config.prediction_type)
    prediction_type = noise_scheduler.config.prediction_type
    vae.requires_grad_(False).to(device)
    text_encoder.requires_grad_(config.train_text_encoder)
    unet.requires_grad_(True) if config.full else add_lora(unet, config.rank, config.lora_alpha, targets=config.lora_targets)
    conditioner = None
    if with_rewards:
        torch.manual_seed(config.seed)
        conditioner = RewardConditioner.from_unet(unet, feedback_dim=text_encoder.config.hidden_size,
                                                  score_embed_dim=config.score_embed_dim)
    null_ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    model = RewardPix2PixModel(unet, text_encoder, null_ids, conditioner)

    def load_split(split):
        return load_edit_dataset(config.dataset_name, config.dataset_config_name, split, cache_dir=config.cache_dir,
                                 max_samples=config.max_train_samples if split == config.dataset_split else None,
                                 require_rewards=with_rewards and split == config.dataset_split)

    dataset = load_split(config.dataset_split)
    shapes = example_shapes(dataset, config.resolution, config.aspect_ratio_buckets)
    examples = EditExamples(dataset, shapes, center_crop=config.center_crop, seed=config.seed)
    if config.cache_latents:
        examples = CachedLatents(examples, vae, progress=config.progress and trainer.is_main_process,
                                 distribution=config.cache_latent_distribution)

    saved = {"unet": "unet"} if config.full else {}
    saved.update({"text_encoder": "text_encoder"} if config.train_text_encoder else {})
    saved.update({"reward_conditioner": "conditioner"} if with_rewards else {})
    trainer.checkpoint_modules(saved, lora=None if config.full else "unet")
    rates = {conditioner: config.conditioner_learning_rate} if conditioner is not None and config.conditioner_learning_rate else None
    sampler = ShapeBatchSampler(shapes, config.train_batch_size, seed=config.seed)
    trainer.prepare(model, examples, sampler, make_collate(tokenizer, with_rewards), learning_rates=rates)
    scaling = vae.config.scaling_factor

    def compute_loss(batch, generator):
        with torch.no_grad():
            if "edited_latents" in batch:  # the edit drawn (or its mode), the source's mode, as below
                distribution = config.cache_latent_distribution
                latents = cached_latents(batch["edited_latents"].to(device), generator, distribution=distribution) * scaling
                image_latents = cached_latents(batch["source_latents"].to(device), distribution=distribution, sample=False)
            else:
                latents = vae.encode(batch["edited"].to(device, vae.dtype)).latent_dist.sample(generator) * scaling
                image_latents = vae.encode(batch["source"].to(device, vae.dtype)).latent_dist.mode()
        bsz = latents.shape[0]
        noise = noise_like(latents, generator)
        timesteps = sample_timesteps(noise_scheduler, bsz, generator, device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        text_drop, image_keep = ip2p_conditioning_dropout(bsz, config.conditioning_dropout_prob, generator, device)
        kwargs = {}
        if with_rewards:
            with torch.no_grad():
                feedback = encode_reward_feedback(tokenizer, trainer.unwrap().text_encoder, batch["feedback"])
            kwargs = {"scores": batch["scores"].to(device), "feedback_embeds": feedback,
                      "reward_drop": (torch.rand(bsz, generator=generator) < config.reward_dropout_prob).to(device)}
        prediction = trainer.model(noisy, timesteps, image_latents * image_keep[:, None, None, None],
                                   batch["input_ids"].to(device), text_drop, **kwargs)
        target = target_for(noise_scheduler, latents, noise, timesteps, prediction_type)
        return diffusion_loss(prediction, target, noise_scheduler, timesteps, config.snr_gamma, prediction_type)

    def build_pipeline(unet_for_pipeline):
        inner = trainer.unwrap()
        components = dict(vae=vae, text_encoder=inner.text_encoder, tokenizer=tokenizer, unet=unet_for_pipeline or inner.unet,
                          scheduler=inference_scheduler(config, config.prediction_type),
                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        if with_rewards:
            pipe = RewardConditionedPix2PixPipeline(reward_conditioner=inner.conditioner, **components)
        else:
            pipe = StableDiffusionInstructPix2PixPipeline(**components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    rows = validation_rows(config, dataset, load_split)
    rewards = {"rewards": [float(v) for v in config.validation_rewards.split(",")]} if with_rewards else {}

    def validate(step: int):
        if trainer.is_main_process and rows:
            write_validation_grid(trainer, step, rows, edit_renderer(config, build_pipeline(None), **rewards))

    result = trainer.train(compute_loss, validate)
    training = output.training_card_fields(config, result, dataset)
    training.update({"text encoder": "trained" if config.train_text_encoder else "frozen",
                     "conditioning dropout": config.conditioning_dropout_prob})
    if with_rewards:
        training.update({"reward dropout (null reward)": config.reward_dropout_prob,
                         "reward score embedding": f"sinusoidal, {config.score_embed_dim} per score",
                         "inference rewards": config.validation_rewards})
    return output.finish_run(config, trainer, result, build_pipeline=build_pipeline, training=training, denoiser="unet",
                             spec="reward_pix2pix" if with_rewards else "instruct_pix2pix", validate=validate,
                             keep_pipeline=keep_pipeline)


if __name__ == "__main__":
    run_as_script(main, "train_reward_pix2pix.py")
