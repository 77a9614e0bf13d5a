"""Training configuration as dataclasses, parsed into diffusers-style command-line flags.

:class:`TrainingConfig` holds what every editforge training script shares (model, data,
resolution, optimisation, checkpoints, LoRA, validation, logging, Hub). The objectives add their
own fields as mixins (:class:`DenoisingObjectiveConfig` for DDPM-style UNets,
:class:`FlowMatchingObjectiveConfig` for SD3-style flow matching), editing trainers add
:class:`EditingConfig`, and each script has one config class, e.g. ``class
RewardPix2PixConfig(EditingConfig, DenoisingObjectiveConfig, TrainingConfig)``. Every field
becomes a ``--field_name`` flag (booleans become ``--name/--no-name`` switches), and a config is
validated whenever it is made: parsed from flags or built in Python (``main(Config(...))``). A
subclass checks its own fields in ``validate()`` and calls ``super().validate()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TypeVar

from editforge.errors import UsageError

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")
TRACKERS = ("jsonl", "tensorboard", "wandb", "none")
# flow matching (training/objectives.py implements them)
DENSITIES = ("uniform", "logit_normal", "mode")
LOSS_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")


def help_field(text: str, **kwargs):
    """A dataclass field whose ``--flag`` help is ``text`` (see :func:`add_dataclass_arguments`)."""
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainingConfig:
    """Settings shared by the training scripts (one flag each, diffusers' names where they exist)."""

    pretrained_model_name_or_path: str = help_field("base pipeline: a local folder or a Hub repo id", default="")
    output_dir: str = help_field("where checkpoints, logs and the final pipeline go", default="editforge-model")
    dataset_name: str = help_field("dataset in editforge's canonical features: a local folder or a Hub id", default="")
    dataset_config_name: str | None = help_field("dataset config (subset) name", default=None)
    dataset_split: str = help_field("split to train on", default="train")
    validation_split: str | None = help_field("split whose first examples are used at each validation", default=None)
    revision: str | None = help_field("revision of the base model on the Hub", default=None)
    cache_dir: str | None = help_field("Hub cache folder", default=None)
    max_train_samples: int | None = help_field("keep only the first N training examples", default=None)

    resolution: int = help_field("training resolution: the shorter side, or the area's side with buckets", default=512)
    center_crop: bool = help_field("crop the centre instead of a random crop (the same for every image of an example)", default=False)
    aspect_ratio_buckets: bool = help_field(
        "keep aspect ratios: batch examples by the nearest of a set of shapes of about resolution^2 pixels",
        default=False,
    )

    train_batch_size: int = help_field("batch size per device", default=4)
    gradient_accumulation_steps: int = help_field("steps to accumulate before an optimiser step", default=1)
    max_train_steps: int = help_field("optimiser steps to train for", default=1000)
    learning_rate: float = help_field("peak learning rate", default=1e-4)
    lr_scheduler: str = help_field(f"one of {', '.join(LR_SCHEDULERS)}", default="constant")
    lr_warmup_steps: int = help_field("linear warm-up steps", default=0)
    adam_beta1: float = help_field("AdamW beta1", default=0.9)
    adam_beta2: float = help_field("AdamW beta2", default=0.999)
    adam_weight_decay: float = help_field("AdamW weight decay", default=1e-2)
    adam_epsilon: float = help_field("AdamW epsilon", default=1e-8)
    max_grad_norm: float = help_field("gradient clipping norm", default=1.0)
    mixed_precision: str = help_field(f"one of {', '.join(MIXED_PRECISION)}", default="no")
    seed: int = help_field("seed of initialisation, data order, noise and dropout", default=0)

    full: bool = help_field("train the whole denoiser instead of a LoRA adapter", default=False)
    rank: int = help_field("LoRA rank of the denoiser's adapter", default=4)
    lora_alpha: int | None = help_field("LoRA alpha (default: the rank)", default=None)
    lora_target_modules: str | None = help_field(
        "comma-separated names of the modules the LoRA adapter wraps (PEFT target_modules, e.g. "
        "to_q,to_k,to_v,to_out.0,conv1,conv2; default: the denoiser's attention projections)", default=None)
    cache_latents: bool = help_field("encode every image once with the frozen VAE before training (its mode)", default=False)
    cache_latent_distribution: bool = help_field(
        "with --cache_latents: keep each latent's mean and variance and draw a latent every step, as encoding every "
        "step does (the same training, twice the cache's memory)", default=False)

    checkpointing_steps: int = help_field("save a resumable checkpoint every N steps (0: never)", default=500)
    checkpoints_total_limit: int | None = help_field("keep at most N checkpoints", default=None)
    resume_from_checkpoint: str | None = help_field("a checkpoint folder, or 'latest'", default=None)

    validation_steps: int = help_field("run validation every N steps (0: only at the end)", default=0)
    num_validation_images: int = help_field("validation examples each time", default=4)
    validation_inference_steps: int = help_field("sampling steps of validation images", default=20)
    validation_guidance_scale: float = help_field("text guidance of validation images", default=7.5)

    report_to: str = help_field(f"tracker: one of {', '.join(TRACKERS)} (jsonl writes logs/metrics.jsonl)", default="jsonl")
    logging_steps: int = help_field("log the step's loss and learning rate every N steps (and at the last step)", default=10)
    dataloader_num_workers: int = help_field("data loader worker processes", default=0)
    push_to_hub: bool = help_field("upload the final pipeline folder to the Hub", default=False)
    hub_model_id: str | None = help_field("repo id for --push_to_hub (default: the output folder's name)", default=None)
    progress: bool = help_field("show progress bars", default=True)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise UsageError naming the first bad setting."""
        checks = [
            (self.pretrained_model_name_or_path, "--pretrained_model_name_or_path is required"),
            (self.dataset_name, "--dataset_name is required"),
            (self.resolution >= 8 and self.resolution % 8 == 0, f"--resolution must be a multiple of 8, got {self.resolution}"),
            (self.train_batch_size >= 1, f"--train_batch_size must be at least 1, got {self.train_batch_size}"),
            (self.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be at least 1"),
            (self.max_train_steps >= 1, f"--max_train_steps must be at least 1, got {self.max_train_steps}"),
            (self.learning_rate > 0, f"--learning_rate must be positive, got {self.learning_rate}"),
            (self.lr_scheduler in LR_SCHEDULERS, f"--lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}"),
            (self.mixed_precision in MIXED_PRECISION, f"--mixed_precision must be one of {', '.join(MIXED_PRECISION)}"),
            (self.rank >= 1, f"--rank must be at least 1, got {self.rank}"),
            (self.report_to in TRACKERS, f"--report_to must be one of {', '.join(TRACKERS)}"),
            (self.checkpointing_steps >= 0, "--checkpointing_steps must be 0 or more"),
            (self.logging_steps >= 1, f"--logging_steps must be at least 1, got {self.logging_steps}"),
            (self.lora_target_modules is None or bool(self.lora_targets),
             f"--lora_target_modules names no module: {self.lora_target_modules!r}"),
            (self.cache_latents or not self.cache_latent_distribution,
             "--cache_latent_distribution needs --cache_latents"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    @property
    def lora_targets(self) -> tuple[str, ...] | None:
        """``--lora_target_modules`` as a tuple (None: the denoiser's default targets)."""
        if self.lora_target_modules is None:
            return None
        return tuple(name.strip() for name in self.lora_target_modules.split(",") if name.strip())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


@dataclass
class DenoisingObjectiveConfig:
    """Fields of the DDPM objective (epsilon / v-prediction UNets); mix in before TrainingConfig."""

    snr_gamma: float | None = help_field("min-SNR loss weighting gamma (5.0 is the paper's choice); off by default", default=None)
    prediction_type: str | None = help_field("epsilon or v_prediction (default: the base scheduler's)", default=None)

    def validate(self) -> None:
        super().validate()
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise UsageError("--prediction_type must be epsilon or v_prediction")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise UsageError("--snr_gamma must be positive")


@dataclass
class FlowMatchingObjectiveConfig:
    """Fields of rectified flow matching as SD3 is trained; mix in before TrainingConfig."""

    weighting_scheme: str = help_field(f"timestep density: one of {', '.join(DENSITIES)}", default="logit_normal")
    logit_mean: float = help_field("mean of the logit-normal density", default=0.0)
    logit_std: float = help_field("standard deviation of the logit-normal density", default=1.0)
    mode_scale: float = help_field("scale of the mode density", default=1.29)
    loss_weighting: str = help_field(f"per-timestep loss weight: one of {', '.join(LOSS_WEIGHTINGS)}", default="none")

    def validate(self) -> None:
        super().validate()
        if self.weighting_scheme not in DENSITIES:
            raise UsageError(f"--weighting_scheme must be one of {', '.join(DENSITIES)}, got {self.weighting_scheme!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise UsageError(f"--loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {self.loss_weighting!r}")
        if self.logit_std <= 0:
            raise UsageError(f"--logit_std must be positive, got {self.logit_std}")


@dataclass
class TextEmbeddingCacheConfig:
    """``--cache_text_embeddings`` for trainers whose text encoders are frozen (:mod:`.text_cache`);
    mix in before TrainingConfig."""

    cache_text_embeddings: bool = help_field(
        "encode every distinct prompt once before training (the text encoders then sit idle; the embeddings"
        " are kept in memory)", default=False)


@dataclass
class TextEncoderTrainingConfig:
    """``--train_text_encoder``: the pipeline's text encoder(s) trained fully beside the denoiser (a
    small model trained from scratch needs it); mix in before TrainingConfig."""

    train_text_encoder: bool = help_field("train the text encoder(s) too (fully)", default=False)

    def validate(self) -> None:
        super().validate()
        if self.train_text_encoder and getattr(self, "cache_text_embeddings", False):
            raise UsageError("--cache_text_embeddings needs frozen text encoders: it cannot be combined with"
                             " --train_text_encoder")


@dataclass
class EditingConfig:
    """Fields of instruction-editing trainers (InstructPix2Pix-style input: the source image's
    latents beside the noisy ones); mix in before TrainingConfig."""

    conditioning_dropout_prob: float = help_field(
        "InstructPix2Pix dropout of the text, of the image, and of both (each)", default=0.05)
    validation_image_guidance_scale: float = help_field("image guidance of validation edits", default=1.5)

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.conditioning_dropout_prob <= 1 / 3:
            raise UsageError(f"--conditioning_dropout_prob out of range 0..1/3: {self.conditioning_dropout_prob}")


ConfigT = TypeVar("ConfigT", bound=TrainingConfig)


def _flag_type(annotation):
    """(argparse type, is_bool) of a dataclass field annotation such as ``int | None``."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # annotations are strings under __future__
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
    return annotation, annotation is bool


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_class) -> argparse.ArgumentParser:
    """One ``--name`` flag per field of a dataclass (booleans as ``--name/--no-name`` switches)."""
    for item in dataclasses.fields(config_class):
        kind, is_bool = _flag_type(item.type)
        help_text = item.metadata.get("help", "")
        if is_bool:
            parser.add_argument(
                f"--{item.name}", action=argparse.BooleanOptionalAction, default=item.default, help=help_text
            )
        else:
            parser.add_argument(f"--{item.name}", type=kind, default=item.default, help=f"{help_text} (default: {item.default})")
    return parser


def build_parser(config_class: type[ConfigT], prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description or config_class.__doc__)
    return add_dataclass_arguments(parser, config_class)


def parse_config(config_class: type[ConfigT], argv: Sequence[str] | None = None, prog: str | None = None) -> ConfigT:
    """Parse flags into a validated config (bad values raise UsageError)."""
    args = build_parser(config_class, prog=prog).parse_args(argv)
    return config_class(**vars(args))
