"""Multi-reward conditioning for InstructPix2Pix-style UNets (Multi-Reward as Condition, arXiv 2411.04713).

A :class:`RewardConditioner` turns three reward scores (instruction following, detail preserving,
generation quality; 0..5 each) and the judge's failure text into two conditions of a
``UNet2DConditionModel``, wired as in the paper's code:

* **time embedding**: the scores go through a sinusoidal projection (``score_embed_dim`` each),
  are concatenated and mapped by an MLP to the UNet's time-embedding width; the pooled CLIP
  embedding of the failure text is mapped by a linear layer to the same width; both are added to
  the output of ``unet.time_embedding``;
* **latent space**: right after ``unet.conv_in``, the features (``H*W`` tokens) attend to two
  reward tokens (score embedding, text embedding) in one BERT-style layer (multi-head cross
  attention, feed-forward, post-LayerNorm), projected back 1x1 and added as a residual.

Where it differs from the paper on purpose: the layers that write into the UNet (the last layer of
the score-to-time MLP, the text-to-time linear layer and the 1x1 output projection) are
zero-initialised, so an untrained conditioner leaves the base model's output unchanged; and a
learned *null reward* (``drop``) replaces the score and text embeddings for reward dropout in
training and for the unconditional branch of reward guidance at inference.

This file is self-contained (torch and diffusers only) so that it can be published as the code
of a Hub component folder (``reward_conditioner/reward_module.py``).

Training and inference use the same three entry points, so the conditioning is identical:

``RewardConditioner.from_unet(unet, feedback_dim=text_encoder.config.hidden_size)``
    builds a conditioner whose widths are read from the UNet's config (SD1.5 and SDXL
    InstructPix2Pix UNets alike).

``with conditioner.conditioning(unet, scores, feedback_embeds, drop=None): unet(...)``
    runs UNet forwards with the reward conditioning applied: ``scores`` [B, 3] in 0..5,
    ``feedback_embeds`` [B, D] pooled text embeddings, ``drop`` an optional boolean [B] that swaps
    in the learned null reward (reward dropout in training; the unconditional branch of reward
    guidance at inference). B is the batch the UNet receives. It works with forward hooks on
    ``unet.time_embedding`` and ``unet.conv_in``, so UNet2DConditionModel is not forked and PEFT
    LoRA adapters on the UNet compose with it.

``encode_reward_feedback(tokenizer, text_encoder, texts)``
    pooled CLIP embeddings [len(texts), D] of the feedback texts, each the three failure texts
    joined with ``"; "`` in perspective order (``join_reward_feedback``); ``"None; None; None"``
    means no failures.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin

# copy of editforge.vocabulary (this Hub file stays self-contained; tests/test_vocabulary.py checks they are equal)
PERSPECTIVES = ("instruction_following", "detail_preserving", "generation_quality")
NO_FAILURE = "None"
FEEDBACK_SEPARATOR = "; "


def join_reward_feedback(feedback: Mapping[str, str] | str | None, perspectives: Sequence[str] = PERSPECTIVES) -> str:
    """One feedback text: the failure text of each perspective joined with ``"; "``.

    ``feedback`` is a mapping {perspective: failure text} (a missing perspective, an empty text or
    ``None`` counts as no failure), an already joined string (returned as is) or ``None`` (no
    failures at all: ``"None; None; None"``).
    """
    if feedback is None:
        feedback = {}
    if isinstance(feedback, str):
        return feedback
    if not isinstance(feedback, Mapping):
        raise TypeError(
            f"reward feedback must be a dict {{perspective: text}} or a string, got {type(feedback).__name__}"
        )
    unknown = sorted(set(feedback) - set(perspectives))
    if unknown:
        raise ValueError(
            f"unknown reward perspective {unknown[0]!r} in feedback; expected one of {', '.join(perspectives)}"
        )
    return FEEDBACK_SEPARATOR.join((feedback.get(p) or NO_FAILURE) for p in perspectives)


def encode_reward_feedback(tokenizer, text_encoder, texts: Sequence[str]) -> torch.Tensor:
    """Pooled embeddings [len(texts), D] of feedback texts from a frozen CLIP text encoder.

    ``D`` is the pooled width: ``pooler_output`` of a ``CLIPTextModel`` (768 for SD1.5) or
    ``text_embeds`` of a ``CLIPTextModelWithProjection``. Gradients follow the caller's mode
    (wrap in ``torch.no_grad()`` for a frozen encoder).
    """
    if isinstance(texts, str):
        texts = [texts]
    # Padded to the longest text only and cut at the encoder's positions, not at the tokenizer's
    # (possibly shorter) prompt length: the pooled embedding is read at the end-of-text token, which
    # the causal text encoder computes the same whatever padding follows it.
    ids = tokenizer(
        list(texts),
        padding="longest",
        max_length=getattr(text_encoder.config, "max_position_embeddings", None) or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(text_encoder.device)
    output = text_encoder(ids)
    pooled = getattr(output, "text_embeds", None)
    return output.pooler_output if pooled is None else pooled


def unet_widths(unet_config) -> tuple[int, int]:
    """(time-embedding width, ``conv_in`` output channels) of a ``UNet2DConditionModel`` config."""
    latent_channels = unet_config["block_out_channels"][0]
    factor = 2 if unet_config.get("time_embedding_type", "positional") == "fourier" else 4
    return unet_config.get("time_embedding_dim") or latent_channels * factor, latent_channels


class RewardConditioner(ModelMixin, ConfigMixin):
    r"""Reward scores and failure text as conditions of an InstructPix2Pix UNet.

    Parameters:
        time_embed_dim (`int`): width of the UNet's time embedding (1280 for SD1.5 and SDXL).
        latent_channels (`int`): output channels of the UNet's ``conv_in`` (320 for SD1.5 and SDXL).
        feedback_dim (`int`, defaults to 768): width of the pooled feedback text embedding.
        perspectives (`tuple[str]`): names of the reward scores, in the order of the score columns.
        score_embed_dim (`int`, defaults to 256): sinusoidal projection width of each score.
        num_attention_heads (`int`, defaults to 8): heads of the latent-space reward attention.
        norm_num_groups (`int`, defaults to 32): groups of the GroupNorm before the reward attention.
        max_score (`float`, defaults to 5.0): scores must lie in ``[0, max_score]``.
        flip_sin_to_cos (`bool`), freq_shift (`float`): the sinusoidal projection's settings
            (``from_unet`` copies the UNet's).
    """

    @register_to_config
    def __init__(
        self,
        time_embed_dim: int,
        latent_channels: int,
        feedback_dim: int = 768,
        perspectives: Sequence[str] = PERSPECTIVES,
        score_embed_dim: int = 256,
        num_attention_heads: int = 8,
        norm_num_groups: int = 32,
        max_score: float = 5.0,
        flip_sin_to_cos: bool = True,
        freq_shift: float = 0.0,
    ):
        super().__init__()
        for name, divisor in (("num_attention_heads", num_attention_heads), ("norm_num_groups", norm_num_groups)):
            if latent_channels % divisor:
                raise ValueError(f"latent_channels ({latent_channels}) must be divisible by {name} ({divisor})")
        scores_dim = len(perspectives) * score_embed_dim

        # scores -> sinusoidal projection -> MLPs to the time embedding and to the first reward token
        self.score_proj = Timesteps(score_embed_dim, flip_sin_to_cos, freq_shift)
        self.score_to_time = TimestepEmbedding(scores_dim, time_embed_dim)
        self.score_to_token = TimestepEmbedding(scores_dim, latent_channels)
        # pooled feedback text -> the time embedding and the second reward token
        self.feedback_to_time = nn.Linear(feedback_dim, time_embed_dim)
        self.feedback_to_token = nn.Linear(feedback_dim, latent_channels)
        # the learned null reward: replaces the projected scores and the feedback embedding
        self.null_scores = nn.Parameter(torch.zeros(scores_dim))
        self.null_feedback = nn.Parameter(torch.zeros(feedback_dim))

        # latent-space reward attention (features query the two reward tokens), BERT-style post-LN
        self.norm = nn.GroupNorm(norm_num_groups, latent_channels, eps=1e-6)
        self.proj_in = nn.Conv2d(latent_channels, latent_channels, kernel_size=1)
        self.attention = Attention(
            query_dim=latent_channels,
            heads=num_attention_heads,
            dim_head=latent_channels // num_attention_heads,
            bias=True,
        )
        self.attention_norm = nn.LayerNorm(latent_channels, eps=1e-12)
        self.feed_forward = nn.Sequential(
            nn.Linear(latent_channels, latent_channels), nn.GELU(), nn.Linear(latent_channels, latent_channels)
        )
        self.feed_forward_norm = nn.LayerNorm(latent_channels, eps=1e-12)
        self.proj_out = nn.Conv2d(latent_channels, latent_channels, kernel_size=1)

        # Zero-initialised outputs: an untrained conditioner adds exactly zero to the UNet.
        for layer in (self.score_to_time.linear_2, self.feedback_to_time, self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_unet(cls, unet, feedback_dim: int = 768, **kwargs) -> "RewardConditioner":
        """A conditioner whose widths match ``unet`` (a ``UNet2DConditionModel`` or its config)."""
        config = getattr(unet, "config", unet)
        time_embed_dim, latent_channels = unet_widths(config)
        kwargs.setdefault("norm_num_groups", config.get("norm_num_groups") or 32)
        kwargs.setdefault("flip_sin_to_cos", config.get("flip_sin_to_cos", True))
        kwargs.setdefault("freq_shift", config.get("freq_shift", 0))
        return cls(time_embed_dim=time_embed_dim, latent_channels=latent_channels, feedback_dim=feedback_dim, **kwargs)

    @property
    def no_failure_feedback(self) -> str:
        """The feedback text that says every perspective is fine: ``"None; None; None"``."""
        return join_reward_feedback(None, self.config.perspectives)

    # Shared with the pipeline, which calls these through the component so its file stays self-contained.
    join_feedback = staticmethod(join_reward_feedback)
    encode_feedback = staticmethod(encode_reward_feedback)

    def check_unet(self, unet) -> None:
        """Raise ``ValueError`` unless this conditioner's widths match ``unet``'s."""
        time_width, latent_width = unet_widths(unet.config)
        if (time_width, latent_width) != (self.config.time_embed_dim, self.config.latent_channels):
            raise ValueError(
                "reward_conditioner does not fit the UNet: it was built for time_embed_dim="
                f"{self.config.time_embed_dim} and latent_channels={self.config.latent_channels}, the UNet has "
                f"{time_width} and {latent_width} (build it with RewardConditioner.from_unet(unet))"
            )

    def forward(
        self, scores: torch.Tensor, feedback_embeds: torch.Tensor, drop: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the rewards.

        Args:
            scores: [B, num_perspectives] in 0..``max_score``.
            feedback_embeds: [B, feedback_dim] pooled feedback text embeddings.
            drop: optional boolean [B]; where true the learned null reward replaces both.

        Returns:
            ``(time_embedding_addition [B, time_embed_dim], reward_tokens [B, 2, latent_channels])``.
        """
        batch, num_scores = scores.shape
        if num_scores != len(self.config.perspectives) or feedback_embeds.shape != (batch, self.config.feedback_dim):
            raise ValueError(
                f"expected scores [B, {len(self.config.perspectives)}] and feedback_embeds"
                f" [B, {self.config.feedback_dim}], got {tuple(scores.shape)} and {tuple(feedback_embeds.shape)}"
            )
        dtype = self.null_scores.dtype
        projected = self.score_proj(scores.reshape(-1)).reshape(batch, -1).to(dtype)
        feedback = feedback_embeds.to(dtype)
        if drop is not None:
            drop = drop.to(device=projected.device, dtype=torch.bool).reshape(batch, 1)
            projected = torch.where(drop, self.null_scores, projected)
            feedback = torch.where(drop, self.null_feedback, feedback)
        time_addition = self.score_to_time(projected) + self.feedback_to_time(feedback)
        tokens = torch.stack([self.score_to_token(projected), self.feedback_to_token(feedback)], dim=1)
        return time_addition, tokens

    def attend(self, features: torch.Tensor, reward_tokens: torch.Tensor) -> torch.Tensor:
        """Latent-space reward attention: ``features`` [B, C, H, W] query ``reward_tokens`` [B, 2, C];
        returns ``features`` plus the (zero-initialised) 1x1 projection of the result."""
        batch, channels, height, width = features.shape
        hidden = self.proj_in(self.norm(features.to(self.proj_in.weight.dtype)))
        hidden = hidden.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        hidden = self.attention_norm(hidden + self.attention(hidden, encoder_hidden_states=reward_tokens))
        hidden = self.feed_forward_norm(hidden + self.feed_forward(hidden))
        # contiguous: a channels-last result would send the UNet's next GroupNorm down a CPU
        # backward kernel that crashes when its own weights are frozen (LoRA training, torch 2.13)
        hidden = hidden.reshape(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()
        return features + self.proj_out(hidden).to(features.dtype)

    @contextlib.contextmanager
    def conditioning(
        self, unet, scores: torch.Tensor, feedback_embeds: torch.Tensor, drop: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Within the block, every forward of ``unet`` is reward-conditioned.

        ``scores`` [B, 3], ``feedback_embeds`` [B, D] and ``drop`` [B] (optional) describe the batch
        of B samples that the UNet receives; the rewards are embedded once, on entry. Used by the
        pipeline and by the training script alike.
        """
        self.check_unet(unet)
        if getattr(unet, "_reward_conditioning_active", False):
            raise RuntimeError("reward conditioning is already active on this UNet (nested `conditioning` blocks)")
        if scores.device.type != "meta" and not bool(((scores >= 0) & (scores <= self.config.max_score)).all()):
            raise ValueError(f"reward scores must lie in 0..{self.config.max_score:g}, got {scores.tolist()}")
        time_addition, tokens = self(scores, feedback_embeds, drop)
        batch = time_addition.shape[0]

        def check_batch(output):
            if output.shape[0] != batch:
                raise ValueError(
                    f"reward conditioning was set up for a UNet batch of {batch}, the UNet got {output.shape[0]}"
                )

        def add_to_time_embedding(module, args, output):
            check_batch(output)
            return output + time_addition.to(output.dtype)

        def attend_after_conv_in(module, args, output):
            check_batch(output)
            return self.attend(output, tokens)

        handles = [
            unet.time_embedding.register_forward_hook(add_to_time_embedding),
            unet.conv_in.register_forward_hook(attend_after_conv_in),
        ]
        unet._reward_conditioning_active = True
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            unet._reward_conditioning_active = False
