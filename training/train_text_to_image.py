#!/usr/bin/env python
"""Plain text-to-image training of a Stable Diffusion-style UNet on image-caption pairs.

    accelerate launch training/train_text_to_image.py \\
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --dataset_name org/edits --output_dir sd15-captions \\
        --resolution 512 --train_batch_size 4 --learning_rate 1e-5 --max_train_steps 2000

(or ``editforge train text-to-image ...`` with the same flags): the counterpart of diffusers'
examples/text_to_image/train_text_to_image.py on editforge's training core.

The base is a ``StableDiffusionPipeline`` folder or repo (a 4-channel UNet2DConditionModel, VAE,
CLIP text encoder and tokenizer, scheduler), possibly with a randomly initialised UNet: a small model
can be pre-trained from scratch here, then aligned with train_diffusion_dpo.py. The UNet is trained
(all of it by default; ``--no-full`` trains a LoRA adapter of ``--rank``), and with
``--train_text_encoder`` the text encoder too (fully: a small model pre-trained from scratch needs
one that reads its captions; a random frozen one carries little of them); the VAE is frozen. The
objective is the DDPM one of ``training.objectives`` (epsilon or v-prediction, optional min-SNR
weighting), as in the other UNet scripts. ``--caption_dropout_prob`` trains a share of examples with
the empty caption, which classifier-free guidance at inference needs.

Data: any dataset ``load_dataset`` reads. ``--columns IMAGE:CAPTION[,IMAGE:CAPTION...]`` names the
image and caption columns; each pair gives one example per row. The default
``source_image:source_caption,edited_image:target_caption`` turns every canonical edit triplet into
two image-caption examples (``--max_train_samples`` keeps the first N rows). A caption that is null
or blank leaves its image out (counted, printed and shown on the card). Square crops at
``--resolution`` (centre, or a window seeded by the example); ``--cache_latents`` encodes every image
once (the VAE's mode). The output folder is a ``StableDiffusionPipeline`` (publishing spec
``text_to_image``), with the LoRA file beside it when one was trained.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from editforge.errors import UsageError
from editforge.training.config import (DenoisingObjectiveConfig, TextEncoderTrainingConfig, TrainingConfig, help_field,
                                       parse_config)
from editforge.training.core import Trainer, run_as_script

DEFAULT_COLUMNS = "source_image:source_caption,edited_image:target_caption"


def parse_columns(value: str) -> list[tuple[str, str]]:
    """``"IMAGE:CAPTION[,IMAGE:CAPTION...]"`` -> ``[(image column, caption column), ...]``."""
    pairs = []
    for part in value.split(","):
        names = [name.strip() for name in part.split(":")]
        if len(names) != 2 or not all(names):
            raise UsageError(f"--columns takes IMAGE:CAPTION pairs separated by commas, got {value!r}")
        pairs.append(tuple(names))
    if len(set(pairs)) != len(pairs):
        raise UsageError(f"--columns names a pair twice: {value!r}")
    return pairs


@dataclass
class TextToImageConfig(DenoisingObjectiveConfig, TextEncoderTrainingConfig, TrainingConfig):
    """Flags of train_text_to_image.py."""

    full: bool = help_field("train the whole UNet (the default); --no-full trains a LoRA adapter of --rank", default=True)
    columns: str = help_field("IMAGE:CAPTION column pairs, comma-separated; each gives one example per row",
                              default=DEFAULT_COLUMNS)
    caption_dropout_prob: float = help_field(
        "share of examples trained with the empty caption, so that the model can be sampled with classifier-free"
        " guidance (guidance_scale > 1)", default=0.0)

    def validate(self) -> None:
        super().validate()
        parse_columns(self.columns)
        if not 0 <= self.caption_dropout_prob < 1:
            raise UsageError(f"--caption_dropout_prob out of range 0..1: {self.caption_dropout_prob}")
        if self.aspect_ratio_buckets:
            raise UsageError("--aspect_ratio_buckets is not supported by train_text_to_image.py yet (square crops only)")

    @property
    def column_pairs(self) -> list[tuple[str, str]]:
        return parse_columns(self.columns)


def load_captioned_dataset(config: TextToImageConfig, split: str, max_samples: int | None = None):
    """The split as a ``datasets.Dataset``, checked for the image and caption columns of ``--columns``."""
    from datasets import Image, load_dataset

    name = config.dataset_name
    try:
        dataset = load_dataset(name, config.dataset_config_name, split=split, cache_dir=config.cache_dir)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"cannot load dataset {name!r} (config {config.dataset_config_name!r}, split {split!r}): {err}") from None
    for image, caption in config.column_pairs:
        for column in (image, caption):
            if column not in dataset.column_names:
                raise UsageError(f"dataset {name!r} has no column {column!r} (--columns {config.columns}); "
                                 f"its columns: {', '.join(dataset.column_names)}")
        if not isinstance(dataset.features[image], Image):
            raise UsageError(f"column {image!r} of {name!r} holds {dataset.features[image]}, not images (--columns)")
        if getattr(dataset.features[caption], "dtype", None) not in ("string", "large_string"):
            raise UsageError(f"column {caption!r} of {name!r} holds {dataset.features[caption]}, not text (--columns)")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def caption_entries(dataset, column_pairs) -> tuple[list[tuple[int, str, str]], int]:
    """``([(row, image column, caption), ...], left out)``: one entry per row and column pair whose
    caption is set; pairs whose caption is null or blank are counted, not kept. Row by row, in
    ``column_pairs`` order."""
    captions = {caption: dataset[caption] for _, caption in column_pairs}
    entries, left_out = [], 0
    for row in range(len(dataset)):
        for image, caption in column_pairs:
            text = captions[caption][row]
            if isinstance(text, str) and text.strip():
                entries.append((row, image, text))
            else:
                left_out += 1
    return entries, left_out


@dataclass
class ImageCaptions:
    """The (image, caption) entries of a dataset as rows ``{"id", "image", "caption"}`` (PIL, RGB)."""

    dataset: object
    entries: list[tuple[int, str, str]]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        row, column, caption = self.entries[index]
        record = self.dataset[row]
        return {"id": f"{record.get('id', row)}:{column}", "image": record[column].convert("RGB"), "caption": caption}


@dataclass
class CaptionExamples(torch.utils.data.Dataset):
    """Image-caption training examples: ``{"index", "image": [3, R, R] in [-1, 1], "caption"}``, each
    image resized to cover the square and cropped (centre, or a window seeded by the example's id)."""

    captions: ImageCaptions
    resolution: int
    center_crop: bool = True
    seed: int = 0

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        from editforge.training.data import fit, to_tensor

        item = self.captions[index]
        rng = random.Random(f"{self.seed}:{item['id']}")
        offset = (0.5, 0.5) if self.center_crop else (rng.random(), rng.random())
        (image,) = fit([item["image"]], self.resolution, self.resolution, offset)
        return {"index": index, "image": to_tensor(image), "caption": item["caption"]}


class TextToImageModel(nn.Module):
    """The trained UNet and the text encoder (trained with ``--train_text_encoder``, else frozen): one
    module, so that data parallelism and checkpoints find them."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, noisy, timesteps, input_ids):
        return self.unet(noisy, timesteps, self.text_encoder(input_ids)[0]).sample


def make_collate(tokenizer):
    def collate(examples):
        images = "image" if "image" in examples[0] else "image_latents"  # --cache_latents
        return {
            "index": torch.tensor([e["index"] for e in examples]),
            images: torch.stack([e[images] for e in examples]),
            "input_ids": tokenizer([e["caption"] for e in examples], padding="max_length", truncation=True,
                                   max_length=tokenizer.model_max_length, return_tensors="pt").input_ids,
        }

    return collate


def main(argv: list[str] | TextToImageConfig | None = None, keep_pipeline: bool = False) -> dict:
    """Train; return a summary (steps, losses, samples/s, output folder, examples and captions left
    out). With ``keep_pipeline`` it also holds the trained pipeline as it is in memory (``"pipeline"``)."""
    config = argv if isinstance(argv, TextToImageConfig) else parse_config(TextToImageConfig, argv, prog="train_text_to_image.py")

    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from editforge.training import output
    from editforge.training.components import inference_scheduler, load_components
    from editforge.training.latents import CachedLatents, cached_latents
    from editforge.training.lora import add_lora
    from editforge.training.objectives import diffusion_loss, noise_like, sample_timesteps, target_for
    from editforge.training.samplers import ShapeBatchSampler
    from editforge.training.validation import prompt_renderer, validation_rows, write_validation_grid

    trainer = Trainer(config, project_name="text-to-image")
    device = trainer.device
    parts = load_components(config, {"tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModel, "vae": AutoencoderKL,
                                     "unet": UNet2DConditionModel, "scheduler": DDPMScheduler})
    tokenizer, text_encoder, vae, unet, noise_scheduler = parts.values()
    if unet.config.in_channels != vae.config.latent_channels or unet.config.addition_embed_type is not None:
        raise UsageError(f"the base UNet of {config.pretrained_model_name_or_path!r} ({unet.config.in_channels} input "
                         f"channels, added conditions {unet.config.addition_embed_type!r}) is not an SD1.5-style "
                         "text-to-image UNet; train_text_to_image.py starts from a StableDiffusionPipeline")
    if config.prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=config.prediction_type)
    prediction_type = noise_scheduler.config.prediction_type
    vae.requires_grad_(False).to(device)
    text_encoder.requires_grad_(config.train_text_encoder).to(device)
    unet.requires_grad_(True) if config.full else add_lora(unet, config.rank, config.lora_alpha, targets=config.lora_targets)
    model = TextToImageModel(unet, text_encoder)

    dataset = load_captioned_dataset(config, config.dataset_split, config.max_train_samples)
    entries, left_out = caption_entries(dataset, config.column_pairs)
    if not entries:
        raise UsageError(f"no row of {config.dataset_name!r} has a caption in --columns {config.columns}")
    dataset.info.description = f"{left_out} images left out: caption null or blank" if left_out else ""
    if left_out:
        trainer.accelerator.print(f"{left_out} of {left_out + len(entries)} images left out: caption null or blank")
    captions = ImageCaptions(dataset, entries)
    examples = CaptionExamples(captions, config.resolution, config.center_crop, config.seed)
    if config.cache_latents:  # every image encoded once: the mode (or the distribution), unscaled
        examples = CachedLatents(examples, vae, keys=("image",), progress=config.progress and trainer.is_main_process,
                                 distribution=config.cache_latent_distribution)
    saved = {"unet": "unet"} if config.full else {}
    saved.update({"text_encoder": "text_encoder"} if config.train_text_encoder else {})
    trainer.checkpoint_modules(saved, lora=None if config.full else "unet")
    sampler = ShapeBatchSampler([(config.resolution, config.resolution)] * len(examples), config.train_batch_size,
                                seed=config.seed)
    trainer.prepare(model, examples, sampler, make_collate(tokenizer))
    scaling = vae.config.scaling_factor
    null_ids = tokenizer([""], padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                         return_tensors="pt").input_ids.to(device)

    def compute_loss(batch, generator):
        with torch.no_grad():
            if "image_latents" in batch:  # cached: the VAE's mode, or a draw from the cached distribution
                latents = cached_latents(batch["image_latents"].to(device), generator,
                                         distribution=config.cache_latent_distribution) * scaling
            else:
                latents = vae.encode(batch["image"].to(device, vae.dtype)).latent_dist.sample(generator) * scaling
        noise = noise_like(latents, generator)
        timesteps = sample_timesteps(noise_scheduler, latents.shape[0], generator, device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        target = target_for(noise_scheduler, latents, noise, timesteps, prediction_type)
        input_ids = batch["input_ids"].to(device)
        if config.caption_dropout_prob > 0:  # drawn after the noise and timesteps: no dropout, no draw
            dropped = (torch.rand(len(input_ids), generator=generator) < config.caption_dropout_prob).to(device)
            input_ids = torch.where(dropped[:, None], null_ids, input_ids)
        prediction = trainer.model(noisy, timesteps, input_ids)
        return diffusion_loss(prediction, target, noise_scheduler, timesteps, config.snr_gamma, prediction_type)

    def build_pipeline(unet_for_pipeline):
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=trainer.unwrap().text_encoder, tokenizer=tokenizer,
                                       unet=unet_for_pipeline or trainer.unwrap().unet,
                                       scheduler=inference_scheduler(config, config.prediction_type),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load_split(split):
        split_dataset = load_captioned_dataset(config, split)
        return ImageCaptions(split_dataset, caption_entries(split_dataset, config.column_pairs)[0])

    rows = validation_rows(config, captions, load_split)

    def validate(step: int):
        if trainer.is_main_process and rows:  # the data's image beside the model's image for its caption
            render = prompt_renderer(config, build_pipeline(None), "caption", lambda row: row["image"])
            write_validation_grid(trainer, step, rows, render)

    result = trainer.train(compute_loss, validate)
    training = output.training_card_fields(config, result, dataset)
    dataset_name = output.card_metadata(config)["datasets"] or f"local folder {Path(config.dataset_name).name!r}"
    training.update({"dataset": dataset_name, "columns (image:caption)": config.columns, "dataset rows": len(dataset),
                     "training examples": len(entries), "objective": f"DDPM, {prediction_type}",
                     "min-SNR gamma": config.snr_gamma if config.snr_gamma is not None else "off",
                     "caption dropout": config.caption_dropout_prob,
                     "text encoder": "trained" if config.train_text_encoder else "frozen"})
    summary = output.finish_run(config, trainer, result, build_pipeline=build_pipeline, training=training, denoiser="unet",
                                spec="text_to_image", validate=validate, keep_pipeline=keep_pipeline)
    summary.update(examples=len(entries), left_out=left_out)
    return summary


if __name__ == "__main__":
    run_as_script(main, "train_text_to_image.py")
