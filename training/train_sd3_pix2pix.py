#!/usr/bin/env python
"""Train SD3 InstructPix2Pix with optional region masks (UltraEdit's editing model, arXiv 2407.05282).

    accelerate launch training/train_sd3_pix2pix.py \\
        --pretrained_model_name_or_path stabilityai/stable-diffusion-3-medium-diffusers \\
        --dataset_name org/ultraedit-region --output_dir sd3-pix2pix --with_mask \\
        --resolution 512 --aspect_ratio_buckets --train_batch_size 4 --learning_rate 1e-4 --rank 16

(or ``editforge train sd3-pix2pix ...`` with the same flags).

From a text-to-image SD3 (the patch embedding ``pos_embed.proj`` widened 16 -> 32 input channels, 48
with ``--with_mask``: old weights copied, new ones zero, so the untrained model is the base) or a 32/48-
channel editing checkpoint (kept at its width; one that disagrees with ``--with_mask`` is refused). Input:
``cat([noisy, source latent, mask latent])``, mask RGB, white = edit, all white for free-form rows. The
condition latents come from the pipeline's own ``encode_condition_image`` (``--image_latents_normalization``,
as at inference); the target is ``x * scaling_factor`` (unscaled) or ``(x - shift_factor) * scaling_factor``.
Unlike UltraEdit's trainer, conditioning dropout is applied (text -> the empty prompt's embeddings, image
-> source AND mask latents zeroed, both) and aspect ratios are kept (buckets). Loss: SD3 flow matching.
Prompts are encoded by the pipeline's ``encode_prompt`` with ``--max_sequence_length`` T5 tokens (zeros
when the base has no T5; 256, the pipeline's default): sample the trained model with the same value.

A LoRA adapter on the transformer (``--rank``) plus the whole patch embedding are trained (``--full``:
the whole transformer); ``--train_text_encoder`` trains the text encoders too, fully (the empty prompt of
text dropout is then encoded by them as they are at each step). The output folder is a published ``StableDiffusion3InstructPix2PixPipeline``
whose transformer is the base, widened, with the trained patch embedding; the LoRA file beside it::

    pipe = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    pipe.load_lora_weights(out, weight_name="pytorch_lora_weights.safetensors")

``patch_embedding.safetensors`` holds the trained patch embedding on its own (keys ``weight``,
``bias``) to put the adapter on another copy of the base: ``widen_patch_embedding(pipe.transformer,
in_channels)``, ``pipe.transformer.pos_embed.proj.load_state_dict(load_file(...))``, then the LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editforge.errors import UsageError
from editforge.training.config import (EditingConfig, FlowMatchingObjectiveConfig, TextEmbeddingCacheConfig,
                                       TextEncoderTrainingConfig, TrainingConfig, help_field, parse_config)
from editforge.training.core import Trainer, run_as_script

PATCH_EMBEDDING_FILE = "patch_embedding.safetensors"
NORMALIZATIONS = ("unscaled", "scaled_shifted")  # the pipeline's IMAGE_LATENTS_NORMALIZATIONS (a test checks)
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")  # SD3's, by component name


@dataclass
class SD3Pix2PixConfig(EditingConfig, FlowMatchingObjectiveConfig, TextEmbeddingCacheConfig, TextEncoderTrainingConfig,
                       TrainingConfig):
    """Flags of train_sd3_pix2pix.py."""

    with_mask: bool = help_field("condition on a region mask too: 48 input channels (noisy, source, mask); else 32",
                                 default=False)
    image_latents_normalization: str | None = help_field(
        "condition latents: unscaled (UltraEdit) or scaled_shifted (diffusers' community SD3 InstructPix2Pix);"
        " default: the editing checkpoint's, or unscaled", default=None)
    validation_guidance_scale: float = help_field("text guidance of validation images", default=7.0)
    max_sequence_length: int = help_field(
        "T5 tokens of each prompt, zeros where the base has no T5 (the pipeline's max_sequence_length): sample the"
        " trained model with the same value", default=256)

    def validate(self) -> None:
        super().validate()
        if self.max_sequence_length < 1:
            raise UsageError(f"--max_sequence_length must be at least 1, got {self.max_sequence_length}")
        if self.image_latents_normalization not in (None, *NORMALIZATIONS):
            raise UsageError(f"--image_latents_normalization must be one of {', '.join(NORMALIZATIONS)},"
                             f" got {self.image_latents_normalization!r}")


class SD3Pix2PixModel(nn.Module):
    """The trained transformer, fed ``cat([noisy, source latent(, mask latent)])``. With
    ``--train_text_encoder`` the pipeline's text encoders are submodules too (so that data parallelism
    and checkpoints find them), run inside ``forward`` by ``encode_prompts(prompts) -> (embeds, pooled)``
    (the pipeline's own ``encode_prompt``); ``text`` is then the batch's prompts, else ``(embeds, pooled)``."""

    def __init__(self, transformer, text_encoders: dict[str, nn.Module] | None = None, encode_prompts=None):
        super().__init__()
        self.transformer = transformer
        self.text_encoder_names = tuple(text_encoders or ())
        for name, module in (text_encoders or {}).items():
            setattr(self, name, module)
        self.encode_prompts = encode_prompts

    def forward(self, noisy, timesteps, condition, text):
        embeds, pooled = text if isinstance(text, tuple) else self.encode_prompts(text)
        return self.transformer(hidden_states=torch.cat([noisy, condition], dim=1), timestep=timesteps,
                                encoder_hidden_states=embeds, pooled_projections=pooled).sample


def lora_checkpoint_hooks():
    """Checkpoint hooks of LoRA training: the LoRA file, the patch embedding's own file and the
    trained text encoders (``--train_text_encoder``), each in its component folder."""
    from safetensors.torch import load_file

    from editforge.training.lora import load_lora, save_lora

    def save(model, folder):
        save_lora(model.transformer, folder)
        save_patch_embedding(model.transformer, folder / PATCH_EMBEDDING_FILE)
        for name in model.text_encoder_names:
            getattr(model, name).save_pretrained(folder / name)

    def load(model, folder):
        load_lora(model.transformer, folder)
        model.transformer.pos_embed.proj.load_state_dict(load_file(str(folder / PATCH_EMBEDDING_FILE)))
        for name in model.text_encoder_names:
            module = getattr(model, name)
            module.load_state_dict(type(module).from_pretrained(folder / name).state_dict())

    return save, load


def save_patch_embedding(transformer, path) -> None:
    from safetensors.torch import save_file

    proj = transformer.pos_embed.proj
    save_file({k: v.detach().cpu().contiguous() for k, v in proj.state_dict().items()}, str(path),
              metadata={"module": "transformer.pos_embed.proj", "in_channels": str(proj.in_channels)})


def load_base(config):
    """The base pipeline as a StableDiffusion3InstructPix2PixPipeline, its transformer at the width
    ``--with_mask`` asks for (a text-to-image one widened), and the normalisation to train with."""
    from editforge.pipelines import StableDiffusion3InstructPix2PixPipeline, widen_patch_embedding
    from editforge.training.components import hub_kwargs

    source = config.pretrained_model_name_or_path
    try:
        pipe = StableDiffusion3InstructPix2PixPipeline.from_pretrained(source, **hub_kwargs(config))
    except (OSError, ValueError, TypeError) as err:
        raise UsageError(f"cannot load the base model {source!r}: {err}") from None
    latent, width = pipe.vae.config.latent_channels, pipe.transformer.config.in_channels
    wanted = (3 if config.with_mask else 2) * latent
    normalization = config.image_latents_normalization
    if width == latent:  # text-to-image SD3
        widen_patch_embedding(pipe.transformer, wanted)
        normalization = normalization or "unscaled"
    elif width in (2 * latent, 3 * latent):
        if width != wanted:
            has = "takes a mask (48 channels)" if width == 3 * latent else "takes no mask (32 channels)"
            raise UsageError(f"the editing checkpoint {source!r} {has}: train it {'with' if width > wanted else 'without'}"
                             f" --with_mask, or start from a text-to-image SD3 to widen it to {wanted} channels")
        saved = pipe.config.image_latents_normalization
        if normalization not in (None, saved):
            raise UsageError(f"the editing checkpoint {source!r} was trained with --image_latents_normalization {saved};"
                             f" got {normalization}")
        normalization = saved
    else:
        raise UsageError(f"the transformer of {source!r} takes {width} input channels; expected {latent} (text-to-image"
                         f" SD3), {2 * latent} or {3 * latent} (SD3 InstructPix2Pix)")
    pipe.register_to_config(image_latents_normalization=normalization)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_collate(with_mask: bool):
    def collate(examples):
        batch = {"index": torch.tensor([e["index"] for e in examples]),
                 "instruction": [e["instruction"] for e in examples]}
        for key in ("source", "edited") + (("mask",) if with_mask else ()):
            key = key if key in examples[0] else f"{key}_latents"  # --cache_latents
            batch[key] = torch.stack([e[key] for e in examples])
        return batch

    return collate


def main(argv: list[str] | SD3Pix2PixConfig | None = None, keep_pipeline: bool = False) -> dict:
    """Train; return a summary (steps, losses, dropout shares, output folder); with ``keep_pipeline``
    also the trained pipeline as it is in memory (``"pipeline"``)."""
    from editforge.pipelines import StableDiffusion3InstructPix2PixPipeline, widen_patch_embedding
    from editforge.training import output
    from editforge.training.data import EditExamples, example_shapes, load_edit_dataset
    from editforge.training.latents import CachedLatents, cached_latents
    from editforge.training.lora import add_lora
    from editforge.training.objectives import flow_matching_batch, ip2p_conditioning_dropout, weighted_mse
    from editforge.training.samplers import ShapeBatchSampler
    from editforge.training.text_cache import PromptEmbeddingCache
    from editforge.training.validation import edit_renderer, validation_rows, write_validation_grid

    config = argv if isinstance(argv, SD3Pix2PixConfig) else parse_config(SD3Pix2PixConfig, argv, prog="train_sd3_pix2pix.py")
    trainer = Trainer(config, project_name="sd3-pix2pix")
    device = trainer.device
    pipe = load_base(config)
    transformer = pipe.transformer
    encoders = {name: getattr(pipe, name) for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None}
    pipe.vae.requires_grad_(False).to(device)
    for encoder in encoders.values():
        encoder.requires_grad_(config.train_text_encoder).to(device)
    if config.full:
        transformer.requires_grad_(True)
    else:
        add_lora(transformer, config.rank, config.lora_alpha, targets=config.lora_targets)
        transformer.pos_embed.proj.requires_grad_(True)

    def encode_prompts(prompts):
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False,
                                                  max_sequence_length=config.max_sequence_length)
        return embeds, pooled

    model = (SD3Pix2PixModel(transformer, encoders, encode_prompts) if config.train_text_encoder
             else SD3Pix2PixModel(transformer))

    def load_split(split):
        return load_edit_dataset(config.dataset_name, config.dataset_config_name, split, cache_dir=config.cache_dir,
                                 max_samples=config.max_train_samples if split == config.dataset_split else None)

    dataset = load_split(config.dataset_split)
    shapes = example_shapes(dataset, config.resolution, config.aspect_ratio_buckets)
    examples = EditExamples(dataset, shapes, center_crop=config.center_crop, seed=config.seed, with_mask=config.with_mask)
    conditions = ("source", "mask") if config.with_mask else ("source",)
    if config.cache_latents:  # the VAE's mode (or distribution), unscaled; normalised below as the pipeline does
        examples = CachedLatents(examples, pipe.vae, keys=("edited", *conditions),
                                 progress=config.progress and trainer.is_main_process,
                                 distribution=config.cache_latent_distribution)
    if config.full:
        trainer.checkpoint_modules({"transformer": "transformer", **{name: name for name in model.text_encoder_names}})
    else:
        trainer.register_checkpoint_hooks(*lora_checkpoint_hooks())
    sampler = ShapeBatchSampler(shapes, config.train_batch_size, seed=config.seed)
    trainer.prepare(model, examples, sampler, make_collate(config.with_mask))
    vae, scheduler = pipe.vae, pipe.scheduler
    scaled = pipe.config.image_latents_normalization == "scaled_shifted"
    shift = vae.config.shift_factor if scaled else 0.0
    scale = vae.config.scaling_factor

    with torch.no_grad():  # the empty prompt of text dropout (trained encoders: encoded again each step)
        null_embeds, null_pooled = encode_prompts([""])
    prompt_embeddings = (PromptEmbeddingCache(dataset["instruction"], encode_prompts) if config.cache_text_embeddings
                         else encode_prompts)

    def compute_loss(batch, generator):
        with torch.no_grad():
            if "edited_latents" in batch:  # cached: the edit drawn (or its mode); the conditions' mode, normalised
                distribution = config.cache_latent_distribution  # as encode_condition_image does
                edited = cached_latents(batch["edited_latents"].to(device), generator, distribution=distribution)
                latents = (edited - shift) * scale
                condition = [cached_latents(batch[f"{k}_latents"].to(device), distribution=distribution, sample=False)
                             for k in conditions]
                condition = [(c - shift) * scale if scaled else c for c in condition]
            else:
                edited = vae.encode(batch["edited"].to(device, vae.dtype)).latent_dist.sample(generator)
                latents = (edited - shift) * scale
                condition = [pipe.encode_condition_image(batch[k].to(device)) for k in conditions]
            condition = torch.cat(condition, dim=1).to(latents.dtype)
            if not config.train_text_encoder:
                embeds, pooled = prompt_embeddings(batch["instruction"])
        step = flow_matching_batch(scheduler, latents, generator, config.weighting_scheme, loss_weighting=config.loss_weighting,
                                   logit_mean=config.logit_mean, logit_std=config.logit_std, mode_scale=config.mode_scale)
        text_drop, image_keep = ip2p_conditioning_dropout(len(latents), config.conditioning_dropout_prob, generator, device)
        condition = condition * image_keep[:, None, None, None].to(condition.dtype)
        # the shares of examples whose inputs were dropped, read from the inputs themselves
        if config.train_text_encoder:  # the empty prompt, encoded by the encoders as they are now
            text = ["" if drop else p for p, drop in zip(batch["instruction"], text_drop.tolist())]
            no_text = torch.tensor([p == "" for p in text], device=device)
        else:
            embeds = torch.where(text_drop[:, None, None], null_embeds.to(embeds.dtype), embeds)
            pooled = torch.where(text_drop[:, None], null_pooled.to(pooled.dtype), pooled)
            text = (embeds, pooled)
            no_text = (embeds == null_embeds).flatten(1).all(1) & (pooled == null_pooled).all(1)
        prediction = trainer.model(step.noisy, step.timesteps, condition, text)
        no_image = (condition == 0).flatten(1).all(1)
        logs = {"text_only_dropped": (no_text & ~no_image).float().mean(), "both_dropped": (no_text & no_image).float().mean(),
                "image_only_dropped": (~no_text & no_image).float().mean()}
        return weighted_mse(prediction, step.target, step.weighting).mean(), logs

    def build_pipeline(base_transformer):
        inner = trainer.unwrap().transformer
        if base_transformer is not None:  # LoRA: the base, widened, carrying the trained patch embedding
            widen_patch_embedding(base_transformer, inner.config.in_channels)
            base_transformer.pos_embed.proj.load_state_dict(inner.pos_embed.proj.state_dict())
        components = {**pipe.components, "transformer": base_transformer or inner}
        result = StableDiffusion3InstructPix2PixPipeline(
            **components, image_latents_normalization=pipe.config.image_latents_normalization)
        result.set_progress_bar_config(disable=True)
        return result

    rows = validation_rows(config, dataset, load_split)

    def validate(step: int):
        if trainer.is_main_process and rows:
            write_validation_grid(trainer, step, rows, edit_renderer(config, build_pipeline(None), with_mask=config.with_mask,
                                                                     max_sequence_length=config.max_sequence_length))

    result = trainer.train(compute_loss, validate)
    training = output.training_card_fields(config, result, dataset, denoiser="transformer")
    training.update({
        "input channels": f"{transformer.config.in_channels} (noisy, source{', mask' if config.with_mask else ''} latents)",
        "condition latents": pipe.config.image_latents_normalization,
        "conditioning dropout (text, image + mask, both; each)": config.conditioning_dropout_prob,
        "timestep density / loss weighting": f"{config.weighting_scheme} / {config.loss_weighting}",
        "text encoders": f"{', '.join(encoders)}: {'trained' if config.train_text_encoder else 'frozen'}",
        "max_sequence_length (T5 tokens; sample with the same)": config.max_sequence_length,
    })
    extra_weights = None
    if not config.full:
        training["patch embedding"] = f"trained fully; in transformer/ and on its own in {PATCH_EMBEDDING_FILE}"

        def extra_weights(folder):
            save_patch_embedding(trainer.unwrap().transformer, folder / PATCH_EMBEDDING_FILE)
            return [folder / PATCH_EMBEDDING_FILE]
    return output.finish_run(config, trainer, result, build_pipeline=build_pipeline, training=training,
                             denoiser="transformer", spec="sd3_instruct_pix2pix", validate=validate,
                             keep_pipeline=keep_pipeline, extra_weights=extra_weights)


if __name__ == "__main__":
    run_as_script(main, "train_sd3_pix2pix.py")
