#!/usr/bin/env python
"""Diffusion-DPO for text-to-image UNets, with InstructEngine's cross-validation alignment.

    accelerate launch training/train_diffusion_dpo.py \\
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --dataset_name org/instructengine-pairs --output_dir dpo-sd15 \\
        --resolution 512 --train_batch_size 4 --learning_rate 1e-5 --max_train_steps 2000 --rank 16 \\
        --alignment cross_validation --beta_dpo 5000

(or ``editforge train dpo ...`` with the same flags).

The loss (Wallace et al., 2023) compares the UNet's denoising error on the preferred image (w) and
the other one (l), against a reference, at the same noise and timestep:
``-log sigmoid(-(beta_dpo / 2) * ((err_w - ref_w) - (err_l - ref_l)))`` (``objectives.dpo_logits``:
beta as in the paper and diffusers' SDXL script; diffusers' SD1.5 script's ``--beta_dpo 2500`` is
5000 here). With LoRA (the default) the reference is the same UNet with its adapter disabled: no
second copy; with ``--full`` a frozen copy is kept.

``--alignment cross_validation`` (InstructEngine, arXiv 2504.10329) uses both rows of a
contrasting pair (rows sharing a ``pair_id``: the same two images, each preferred under its own
prompt), with one noise and timestep for both comparisons; ``single_pair`` uses one row per pair.
Ties (``label_0`` 0.5) are left out by default (``--ties skip``, counted on the card) or count both
ways (``--ties symmetric``): never as a win for image 0. Logged beside the loss: the implicit
reward accuracy (share of comparisons whose margin favours the preferred image) and margin.
SD1.5-style UNets (one CLIP text encoder) and SDXL (two text encoders, the penultimate hidden states
of both and the second's pooled output, and SDXL's six size and crop time ids from each pair's
original size and crop, as diffusers' SDXL script computes them); beta means the same for both.
The output folder is a ``StableDiffusionPipeline`` (or ``StableDiffusionXLPipeline``) with the LoRA
file beside it (``pipe.load_lora_weights(out, weight_name="pytorch_lora_weights.safetensors")``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from editforge.errors import UsageError
from editforge.training.config import (DenoisingObjectiveConfig, TextEmbeddingCacheConfig, TrainingConfig, help_field,
                                       parse_config)
from editforge.training.core import Trainer, run_as_script

ALIGNMENTS = ("cross_validation", "single_pair")
TIES = ("skip", "symmetric")


@dataclass
class DiffusionDPOConfig(DenoisingObjectiveConfig, TextEmbeddingCacheConfig, TrainingConfig):
    """Flags of train_diffusion_dpo.py."""

    beta_dpo: float = help_field("DPO strength: the paper's beta (diffusers' SD1.5 script's 2500 is 5000 here)", default=5000.0)
    alignment: str = help_field(f"one of {', '.join(ALIGNMENTS)}", default="cross_validation")
    ties: str = help_field(f"tied pairs (label_0 0.5): {', '.join(TIES)}", default="skip")

    def validate(self) -> None:
        super().validate()
        if self.beta_dpo <= 0:
            raise UsageError(f"--beta_dpo must be positive, got {self.beta_dpo}")
        if self.alignment not in ALIGNMENTS:
            raise UsageError(f"--alignment must be one of {', '.join(ALIGNMENTS)}, got {self.alignment!r}")
        if self.ties not in TIES:
            raise UsageError(f"--ties must be one of {', '.join(TIES)}, got {self.ties!r}")
        if self.aspect_ratio_buckets:
            raise UsageError("--aspect_ratio_buckets is not supported by train_diffusion_dpo.py yet (square crops only)")


class DPOModel(nn.Module):
    """The trained UNet and, with ``--full``, its frozen reference (with LoRA the reference is the
    same UNet with the adapter disabled)."""

    def __init__(self, unet, reference=None):
        super().__init__()
        self.unet, self.reference = unet, reference

    def forward(self, noisy, timesteps, hidden, added=None):
        return self.unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample

    @torch.no_grad()
    def reference_prediction(self, noisy, timesteps, hidden, added=None):
        if self.reference is not None:
            return self.reference(noisy, timesteps, hidden, added_cond_kwargs=added).sample
        self.unet.disable_adapters()
        try:
            return self.unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
        finally:
            self.unet.enable_adapters()


def tokenize(tokenizers, prompts: list[str]) -> list[torch.Tensor]:
    """The input ids of ``prompts`` for each text encoder's tokenizer."""
    return [t(prompts, padding="max_length", truncation=True, max_length=t.model_max_length,
              return_tensors="pt").input_ids for t in tokenizers]


class PromptEncoder:
    """Input ids -> the UNet's text conditions: SD1.5's last hidden states, or SDXL's penultimate
    hidden states of both encoders (concatenated) plus the second's pooled projection."""

    def __init__(self, text_encoders):
        self.text_encoders = text_encoders

    @torch.no_grad()
    def __call__(self, input_ids: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        if len(self.text_encoders) == 1:
            return self.text_encoders[0](input_ids[0].to(device))[0], None
        hidden, pooled = [], None
        for encoder, ids in zip(self.text_encoders, input_ids):
            out = encoder(ids.to(device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's pooled projection (text_embeds)
        return torch.cat(hidden, dim=-1), pooled


def sdxl_time_ids(original_sizes, crops_top_left, resolution: int) -> torch.Tensor:
    """SDXL's added time ids per example: original (h, w), crop (top, left), target (h, w)."""
    return torch.tensor([[*size, *crop, resolution, resolution] for size, crop in zip(original_sizes, crops_top_left)],
                        dtype=torch.float32)


def make_collate(tokenizers):
    def collate(examples):
        comparisons = [(i, p, w, t) for i, e in enumerate(examples)
                       for p, w, t in zip(e["prompts"], e["winners"], e["ties"])]
        images = "images" if "images" in examples[0] else "images_latents"  # --cache_latents
        return {
            "index": torch.tensor([e["index"] for e in examples]),
            images: torch.stack([e[images] for e in examples]),
            "original_size": [e["original_size"] for e in examples],
            "crop_top_left": [e["crop_top_left"] for e in examples],
            "example": torch.tensor([c[0] for c in comparisons]),
            "prompts": [c[1] for c in comparisons],
            "input_ids": tokenize(tokenizers, [c[1] for c in comparisons]),
            "winner": torch.tensor([c[2] for c in comparisons]),
            "tie": torch.tensor([c[3] for c in comparisons]),
        }

    return collate


def main(argv: list[str] | DiffusionDPOConfig | None = None, keep_pipeline: bool = False) -> dict:
    """Train; return a summary (steps, losses, logged reward accuracy and margin, output folder)."""
    from diffusers import (AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from editforge.training import output
    from editforge.training.components import inference_scheduler, load_components
    from editforge.training.data import PairExamples, contrasting_pairs, load_pair_dataset
    from editforge.training.latents import CachedLatents, cached_latents
    from editforge.training.lora import add_lora
    from editforge.training.objectives import (diffusion_dpo_loss, dpo_logits, noise_like, sample_timesteps, target_for,
                                               weighted_mse)
    from editforge.training.samplers import ShapeBatchSampler
    from editforge.training.text_cache import PromptEmbeddingCache
    from editforge.training.validation import prompt_renderer, validation_rows, write_validation_grid

    config = argv if isinstance(argv, DiffusionDPOConfig) else parse_config(DiffusionDPOConfig, argv, prog="train_diffusion_dpo.py")
    trainer = Trainer(config, project_name="diffusion-dpo")
    device = trainer.device
    parts = load_components(config, {"vae": AutoencoderKL, "unet": UNet2DConditionModel, "scheduler": DDPMScheduler})
    vae, unet, noise_scheduler = parts.values()
    if unet.config.in_channels != vae.config.latent_channels:
        raise UsageError(f"the base UNet of {config.pretrained_model_name_or_path!r} has {unet.config.in_channels} input "
                         "channels; Diffusion-DPO starts from a text-to-image model")
    sdxl = unet.config.addition_embed_type == "text_time"
    if unet.config.addition_embed_type not in (None, "text_time"):
        raise UsageError(f"the base UNet of {config.pretrained_model_name_or_path!r} takes added conditions "
                         f"{unet.config.addition_embed_type!r}; train_diffusion_dpo.py trains SD1.5-style and SDXL UNets")
    texts = {"tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModel}
    if sdxl:
        texts.update(tokenizer_2=CLIPTokenizer, text_encoder_2=CLIPTextModelWithProjection)
    texts = load_components(config, texts)
    tokenizers = [texts[k] for k in texts if k.startswith("tokenizer")]
    text_encoders = [texts[k] for k in texts if k.startswith("text_encoder")]
    if config.prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=config.prediction_type)
    prediction_type = noise_scheduler.config.prediction_type
    vae.requires_grad_(False).to(device)
    for encoder in text_encoders:
        encoder.requires_grad_(False).to(device)
    encode = PromptEncoder(text_encoders)
    reference = None
    if config.full:
        reference = copy.deepcopy(unet).requires_grad_(False).to(device)
        unet.requires_grad_(True)
    else:
        add_lora(unet, config.rank, config.lora_alpha, targets=config.lora_targets)
    model = DPOModel(unet, reference)

    dataset = load_pair_dataset(config.dataset_name, config.dataset_config_name, config.dataset_split,
                                cache_dir=config.cache_dir, max_samples=config.max_train_samples,
                                keep_ties=config.ties == "symmetric")
    pairs = contrasting_pairs(dataset, cross_validation=config.alignment == "cross_validation")
    examples = PairExamples(dataset, pairs, config.resolution, center_crop=config.center_crop, seed=config.seed)
    if config.cache_latents:  # both images of every pair encoded once: the mode (or the distribution), unscaled
        examples = CachedLatents(examples, vae, keys=("images",), progress=config.progress and trainer.is_main_process,
                                 distribution=config.cache_latent_distribution)
    trainer.checkpoint_modules({"unet": "unet"} if config.full else {}, lora=None if config.full else "unet")
    sampler = ShapeBatchSampler([(config.resolution, config.resolution)] * len(examples), config.train_batch_size,
                                seed=config.seed)
    trainer.prepare(model, examples, sampler, make_collate(tokenizers))
    scaling = vae.config.scaling_factor
    text_cache = None
    if config.cache_text_embeddings:  # every row's prompt, encoded once
        text_cache = PromptEmbeddingCache(dataset["prompt"], lambda prompts: encode(tokenize(tokenizers, prompts), device))

    def compute_loss(batch, generator):
        if "images_latents" in batch:  # cached: the VAE's mode, or a draw from the cached distribution
            cached = batch["images_latents"].to(device)
            latents = cached_latents(cached.flatten(0, 1), generator, distribution=config.cache_latent_distribution)
        else:
            with torch.no_grad():
                latents = vae.encode(batch["images"].to(device, vae.dtype).flatten(0, 1)).latent_dist.sample(generator)
        bsz = len(batch["index"])
        latents = latents.unflatten(0, (bsz, 2)) * scaling
        hidden, pooled = text_cache(batch["prompts"]) if text_cache is not None else encode(batch["input_ids"], device)
        noise = noise_like(latents, generator)
        timesteps = sample_timesteps(noise_scheduler, bsz, generator, device)  # one per pair: both images share it
        noisy = noise_scheduler.add_noise(latents.flatten(0, 1), noise.flatten(0, 1),
                                          timesteps.repeat_interleave(2)).unflatten(0, (bsz, 2))
        ex, w = batch["example"].to(device), batch["winner"].to(device)
        pick = lambda x: torch.cat([x[ex, w], x[ex, 1 - w]])  # noqa: E731 - winners, then losers
        inputs, t, text = pick(noisy).contiguous(), timesteps[ex].repeat(2), hidden.repeat(2, 1, 1)
        added = None
        if sdxl:  # each comparison's example's sizes and crop, and its prompt's pooled embedding
            time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], config.resolution).to(device)
            added = {"time_ids": time_ids[ex].repeat(2, 1), "text_embeds": pooled.repeat(2, 1)}
        target = target_for(noise_scheduler, pick(latents), pick(noise), t, prediction_type)
        model_w, model_l = weighted_mse(trainer.model(inputs, t, text, added), target).chunk(2)
        ref_w, ref_l = weighted_mse(trainer.unwrap().reference_prediction(inputs, t, text, added), target).chunk(2)
        logits = dpo_logits(model_w, model_l, ref_w, ref_l, config.beta_dpo)
        ties = batch["tie"].to(device)
        decided = logits[~ties]
        logs = {"reward_margin": decided.mean().detach() if len(decided) else torch.tensor(0.0),
                "reward_accuracy": (decided > 0).float().mean() if len(decided) else torch.tensor(0.0)}
        return diffusion_dpo_loss(logits, ties if bool(ties.any()) else None), logs

    def build_pipeline(unet_for_pipeline):
        common = {"vae": vae, "unet": unet_for_pipeline or trainer.unwrap().unet,
                  "scheduler": inference_scheduler(config, config.prediction_type), **texts}
        if sdxl:
            pipe = StableDiffusionXLPipeline(**common)
        else:
            pipe = StableDiffusionPipeline(**common, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    rows = validation_rows(config, dataset, lambda split: load_pair_dataset(
        config.dataset_name, config.dataset_config_name, split, cache_dir=config.cache_dir, keep_ties=True))

    def validate(step: int):
        if trainer.is_main_process and rows:  # the preferred image beside the model's image for its prompt
            render = prompt_renderer(config, build_pipeline(None), "prompt",
                                     lambda row: row["image_0" if row["label_0"] >= 0.5 else "image_1"])
            write_validation_grid(trainer, step, rows, render)

    result = trainer.train(compute_loss, validate)
    training = output.training_card_fields(config, result, dataset)
    training.update({"objective": "Diffusion-DPO", "beta_dpo (paper's beta)": config.beta_dpo,
                     "alignment": config.alignment, "ties": config.ties, "training pairs": len(pairs)})
    return output.finish_run(config, trainer, result, build_pipeline=build_pipeline, training=training, denoiser="unet",
                             spec="diffusion_dpo_sdxl" if sdxl else "diffusion_dpo", validate=validate,
                             keep_pipeline=keep_pipeline)


if __name__ == "__main__":
    run_as_script(main, "train_diffusion_dpo.py")
