"""StableDiffusion3InstructPix2PixPipeline: instruction-based editing on SD3, with optional region masks.

UltraEdit's editing model (arXiv 2407.05282, HaozheZhao/UltraEdit): Stable Diffusion 3 whose patch
embedding takes, channel-concatenated, the noisy latent, the source image latent and (for the
region-mask variant) a mask latent: 16 + 16 (+ 16) channels for SD3's 16-channel VAE. The mask is an
RGB image, white = the region to edit, encoded by the VAE like the source; a free-form edit uses an
all-white mask. Guidance is InstructPix2Pix's, with three transformer branches
[text + image, negative + image, negative + zero image]:

    pred = uncond + guidance_scale * (text - image) + image_guidance_scale * (image - uncond)

(the unconditional branch zeroes the image and mask latents).

The components are stock SD3's (three text encoders, or two with ``text_encoder_3=None``); the
transformer's ``in_channels`` (2x or 3x the VAE's latent channels: 32 or 48 for SD3) says whether it
takes a mask. How the condition latents are normalised is a config value,
``image_latents_normalization``:

* ``"unscaled"`` (the default; UltraEdit's released checkpoints): the source and mask latents are the
  VAE's ``latent_dist.mode()`` as they are, and the denoised latent lives in ``x * scaling_factor``
  space (UltraEdit's trainer scales the target latent and never uses ``shift_factor``), so it is decoded
  as ``latents / scaling_factor``;
* ``"scaled_shifted"`` (diffusers' community ``pipeline_stable_diffusion_3_instruct_pix2pix.py`` and stock
  SD3): condition latents ``(x - shift_factor) * scaling_factor``, decoded as
  ``latents / scaling_factor + shift_factor``.

This file is self-contained (torch, diffusers, transformers): it is published as a Hub repo's
``pipeline.py``. Loading::

    # 1. UltraEdit's checkpoints (model_index names a class stock diffusers lacks) with this code
    DiffusionPipeline.from_pretrained("BleachNick/SD3_UltraEdit_w_mask", custom_pipeline=<this file or a
                                      repo shipping it>, trust_remote_code=True)
    # 2. a repo published by editforge (its own pipeline.py)
    DiffusionPipeline.from_pretrained("org/sd3-pix2pix", trust_remote_code=True)
    # 3. the installed package (editforge): no trust flag, a repo's code files are never run
    StableDiffusion3InstructPix2PixPipeline.from_pretrained("org/sd3-pix2pix")
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers import (
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    SiglipImageProcessor,
    SiglipVisionModel,
    T5EncoderModel,
    T5TokenizerFast,
)

from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput
from diffusers.models.autoencoders import AutoencoderKL
from diffusers.models.transformers import SD3Transformer2DModel
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
    StableDiffusion3Pipeline,
    calculate_shift,
    retrieve_timesteps,
)
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import retrieve_latents
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

IMAGE_LATENTS_NORMALIZATIONS = ("unscaled", "scaled_shifted")
_IMAGE_TYPES = (PIL.Image.Image, np.ndarray, torch.Tensor)
# Hub download settings that only matter for resolving a repo id to a local folder.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision")


def widen_patch_embedding(transformer: SD3Transformer2DModel, in_channels: int) -> SD3Transformer2DModel:
    """Widen ``transformer.pos_embed.proj`` to ``in_channels`` input channels, in place; return it.

    The existing weights are copied into the first input channels and the new ones are zero, so the
    widened model ignores the extra (image, mask) channels until it is trained: UltraEdit's
    initialisation (16 -> 32 for stage 1, 32 -> 48 for the mask stage). ``config.in_channels`` is
    updated (and ``out_channels`` pinned to the old width, if it was implied), so the model saves and
    loads with its new shape. Narrowing is refused.
    """
    proj = transformer.pos_embed.proj
    old = proj.in_channels
    if in_channels == old:
        return transformer
    if in_channels < old:
        raise ValueError(f"widen_patch_embedding: the patch embedding already takes {old} channels; it cannot be"
                         f" narrowed to {in_channels}")
    widened = torch.nn.Conv2d(
        in_channels, proj.out_channels, kernel_size=proj.kernel_size, stride=proj.stride, padding=proj.padding,
        bias=proj.bias is not None, device=proj.weight.device, dtype=proj.weight.dtype,
    )
    with torch.no_grad():
        widened.weight.zero_()
        widened.weight[:, :old] = proj.weight
        if proj.bias is not None:
            widened.bias.copy_(proj.bias)
    widened.weight.requires_grad_(proj.weight.requires_grad)
    if widened.bias is not None:
        widened.bias.requires_grad_(proj.bias.requires_grad)
    transformer.pos_embed.proj = widened
    if transformer.config.get("out_channels") is None:
        transformer.register_to_config(out_channels=old)
    transformer.register_to_config(in_channels=in_channels)
    return transformer


class StableDiffusion3InstructPix2PixPipeline(StableDiffusion3Pipeline):
    r"""Instruction-based image editing with Stable Diffusion 3 (UltraEdit's model family).

    Components are those of [`StableDiffusion3Pipeline`]; the transformer takes 2x (image) or 3x (image
    and mask) the VAE's latent channels (``widen_patch_embedding`` makes one from a text-to-image SD3).

    Args:
        image_latents_normalization (`str`, defaults to `"unscaled"`):
            `"unscaled"`: UltraEdit's convention (condition latents as the VAE gives them, denoised latents
            decoded without `shift_factor`). `"scaled_shifted"`: diffusers' community SD3 InstructPix2Pix
            pipeline and stock SD3 (`(x - shift_factor) * scaling_factor`). Saved in `model_index.json`.
    """

    # editforge: T5 is optional, as SD3 allows (checkpoints that drop it load without passing text_encoder_3=None)
    _optional_components = ["image_encoder", "feature_extractor", "text_encoder_3", "tokenizer_3"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "pooled_prompt_embeds", "image_latents", "mask_latents"]

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer_2: CLIPTokenizer,
        text_encoder_3: T5EncoderModel,
        tokenizer_3: T5TokenizerFast,
        image_encoder: SiglipVisionModel = None,
        feature_extractor: SiglipImageProcessor = None,
        image_latents_normalization: str = "unscaled",
    ):
        if image_latents_normalization not in IMAGE_LATENTS_NORMALIZATIONS:
            raise ValueError(
                f"image_latents_normalization must be one of {', '.join(map(repr, IMAGE_LATENTS_NORMALIZATIONS))}"
                f" (\"unscaled\": UltraEdit's checkpoints; \"scaled_shifted\": diffusers' community SD3"
                f" InstructPix2Pix), got {image_latents_normalization!r}"
            )
        super().__init__(
            transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, text_encoder_3,
            tokenizer_3, image_encoder=image_encoder, feature_extractor=feature_extractor,
        )
        self.register_to_config(image_latents_normalization=image_latents_normalization)

    # ----------------------------------------------------------------------------------------------
    # properties

    @property
    def image_guidance_scale(self):
        return self._image_guidance_scale

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels if getattr(self, "vae", None) is not None else 16

    @property
    def takes_mask(self) -> bool:
        """Whether the transformer takes a mask latent (3x the latent channels) besides the image latent."""
        return self._condition_layout()[1]

    def _condition_layout(self) -> tuple[int, bool]:
        """(transformer in_channels, takes a mask), or a clear error for a transformer of another width."""
        in_channels = self.transformer.config.in_channels
        latent = self.latent_channels
        if in_channels == 2 * latent:
            return in_channels, False
        if in_channels == 3 * latent:
            return in_channels, True
        raise ValueError(
            f"the transformer takes {in_channels} input channels; an SD3 InstructPix2Pix transformer takes"
            f" {2 * latent} (noisy + image latents) or {3 * latent} (noisy + image + mask latents) for a VAE of"
            f" {latent} latent channels. Widen a text-to-image transformer with"
            " widen_patch_embedding(transformer, in_channels)"
        )

    # ----------------------------------------------------------------------------------------------
    # images and masks

    @staticmethod
    def _items(value, name: str) -> list:
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(item, _IMAGE_TYPES) for item in items):
            found = f"a list holding {type(items[0]).__name__ if items else 'nothing'}" if isinstance(value, list) \
                else type(value).__name__
            raise TypeError(f"`{name}` must be a PIL image, a numpy array, a torch tensor or a list of them, got {found}")
        return items

    def _image_size(self, image) -> tuple[int, int]:
        """(height, width) of the first input image in pixels (of latents: times vae_scale_factor)."""
        first = self._items(image, "image")[0]
        if isinstance(first, PIL.Image.Image):
            return first.height, first.width
        if isinstance(first, torch.Tensor) and first.ndim >= 3 and first.shape[-3] == self.latent_channels:
            return first.shape[-2] * self.vae_scale_factor, first.shape[-1] * self.vae_scale_factor
        if isinstance(first, np.ndarray) and first.ndim >= 3 and first.shape[-1] in (1, 3, 4):
            return first.shape[-3], first.shape[-2]  # numpy images are channels-last
        return first.shape[-2], first.shape[-1]

    def check_image_size(self, height: int, width: int) -> None:
        multiple = self.vae_scale_factor * self.patch_size
        if height % multiple or width % multiple:
            raise ValueError(
                f"the image is {width}x{height} (width x height); SD3 InstructPix2Pix needs both sides to be"
                f" multiples of {multiple} (vae_scale_factor {self.vae_scale_factor} x patch_size {self.patch_size})."
                f" Resize or crop it, e.g. to {max(multiple, width - width % multiple)}x"
                f"{max(multiple, height - height % multiple)}, or pass height= and width= to resize it here"
            )

    def preprocess_mask(self, mask_image, height: int, width: int) -> torch.Tensor:
        """The mask as an RGB image tensor [B, 3, height, width] in [-1, 1], as the VAE encodes it.

        PIL masks of any mode are read as greyscale ("L") and resized with nearest-neighbour to the
        image's size; arrays and tensors ([H, W], [1 or 3, H, W], [B, 1 or 3, H, W] torch; [H, W], [H, W, 1
        or 3], [B, H, W, 1 or 3] numpy) must hold values in 0..1 and are resized with nearest too.
        """
        tensors = []
        for item in self._items(mask_image, "mask_image"):
            if isinstance(item, PIL.Image.Image):
                grey = item.convert("L")
                if grey.size != (width, height):
                    grey = grey.resize((width, height), resample=PIL.Image.NEAREST)
                tensor = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)[None, None]
            else:
                tensor = torch.as_tensor(item).float() if isinstance(item, np.ndarray) else item.float()
                if isinstance(item, np.ndarray) and tensor.ndim >= 3 and tensor.shape[-1] in (1, 3):
                    tensor = tensor.movedim(-1, -3)
                while tensor.ndim < 4:
                    tensor = tensor.unsqueeze(0)
                if tensor.ndim != 4 or tensor.shape[1] not in (1, 3):
                    raise ValueError(
                        f"`mask_image` as an array must be [H, W], [C, H, W] or [B, C, H, W] with 1 or 3 channels, got"
                        f" shape {tuple(item.shape)}"
                    )
                if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
                    raise ValueError(
                        "`mask_image` as an array must hold values in 0..1 (1 = the region to edit), got values in"
                        f" {tensor.min().item():g}..{tensor.max().item():g}"
                    )
                if tuple(tensor.shape[-2:]) != (height, width):
                    tensor = F.interpolate(tensor, size=(height, width), mode="nearest")
            tensors.append(tensor[:, :1] if tensor.shape[1] == 1 else tensor)
        masks = torch.cat([t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t for t in tensors])
        return masks * 2.0 - 1.0

    def encode_condition_image(self, pixels: torch.Tensor, generator=None) -> torch.Tensor:
        """VAE latents of an image or mask in [-1, 1], normalised as ``image_latents_normalization`` says."""
        latents = retrieve_latents(self.vae.encode(pixels.to(self.vae.dtype)), generator=generator, sample_mode="argmax")
        if self.config.image_latents_normalization == "scaled_shifted":
            latents = (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor
        return latents

    def _per_sample(self, latents: torch.Tensor, batch_size: int, num_images_per_prompt: int, name: str) -> torch.Tensor:
        """One row per prompt and image: a single image (or mask) serves every prompt; one per prompt stays
        with its prompt for each of its ``num_images_per_prompt`` copies."""
        total = batch_size * num_images_per_prompt
        if latents.shape[0] == 1:
            return latents.expand(total, -1, -1, -1)
        if latents.shape[0] == batch_size:
            return latents.repeat_interleave(num_images_per_prompt, dim=0)
        if latents.shape[0] == total:
            return latents
        raise ValueError(f"got {latents.shape[0]} `{name}` entries for {batch_size} prompts; give one or one per prompt")

    def prepare_image_latents(
        self, image, mask_image, batch_size, num_images_per_prompt, height, width, dtype, device, generator=None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Condition latents, one row per sample: ``(image_latents, mask_latents or None)``.

        ``image`` may also be latents (a tensor of ``latent_channels`` channels), taken as they are.
        ``mask_latents`` is ``None`` for a transformer without a mask input; for one with it, a missing
        ``mask_image`` is the all-white (free-form) mask.
        """
        _, takes_mask = self._condition_layout()
        if mask_image is not None and not takes_mask:
            raise ValueError(
                f"this transformer takes {self.transformer.config.in_channels} input channels (noisy + image latents):"
                " it has no mask input. Pass mask_image=None (free-form editing), or load a mask-conditioned"
                f" checkpoint ({3 * self.latent_channels} channels)"
            )
        if isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[1] == self.latent_channels:
            image_latents = image.to(device=device, dtype=dtype)
        else:
            pixels = self.image_processor.preprocess(image, height=height, width=width).to(device=device)
            image_latents = self.encode_condition_image(pixels, generator).to(dtype)
        image_latents = self._per_sample(image_latents, batch_size, num_images_per_prompt, "image")
        if not takes_mask:
            return image_latents, None
        if mask_image is None:  # free-form: an all-white mask
            pixels = torch.ones((1, 3, height, width), device=device)
        else:
            pixels = self.preprocess_mask(mask_image, height, width).to(device=device)
        mask_latents = self.encode_condition_image(pixels, generator).to(dtype)
        return image_latents, self._per_sample(mask_latents, batch_size, num_images_per_prompt, "mask_image")

    # ----------------------------------------------------------------------------------------------

    # Adapted from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3.StableDiffusion3Pipeline.__call__
    # (diffusers 0.42.1), with InstructPix2Pix's three-branch guidance from
    # diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_instruct_pix2pix.StableDiffusionInstructPix2PixPipeline.__call__.
    # Differences, each marked "editforge:": `image` / `mask_image` and their latents concatenated to the
    # transformer input; branches [text+image, negative+image, negative+zero image]; the output size is the
    # image's (or height/width, resizing it); the decode follows `image_latents_normalization`; no skip-layer
    # guidance.
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = None,
        image: PipelineImageInput = None,
        mask_image: PipelineImageInput | None = None,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        image_guidance_scale: float = 1.5,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.FloatTensor | None = None,
        prompt_embeds: torch.FloatTensor | None = None,
        negative_prompt_embeds: torch.FloatTensor | None = None,
        pooled_prompt_embeds: torch.FloatTensor | None = None,
        negative_pooled_prompt_embeds: torch.FloatTensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[int, int, dict], None] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 256,
        mu: float | None = None,
        mask_img: PipelineImageInput | None = None,
    ):
        r"""Edit ``image`` as ``prompt`` says.

        Args:
            prompt: the edit instruction(s).
            image: the source image(s): PIL, numpy, tensor or a list; one for all prompts or one per prompt.
                Its size is the output's; both sides must be multiples of ``vae_scale_factor * patch_size``
                (16 for SD3), or pass ``height`` and ``width`` to resize it.
            mask_image: for a mask-conditioned transformer (3x latent channels): the region to edit, white
                = edit (PIL of any mode, read as greyscale, resized with nearest to the image's size; or an
                array in 0..1). ``None`` = free-form = an all-white mask. A transformer without a mask input
                refuses one.
            guidance_scale: text guidance (``> 1`` turns guidance on, as in SD3).
            image_guidance_scale: image guidance, applied whenever guidance is on:
                ``uncond + guidance_scale * (text - image) + image_guidance_scale * (image - uncond)``.
            mask_img: the name UltraEdit's fork gives ``mask_image`` (accepted so that its example code runs).
            Every other argument is [`StableDiffusion3Pipeline.__call__`]'s. ``callback_on_step_end`` may
            also read and replace ``image_latents`` and ``mask_latents`` (all three branches).

        Returns:
            [`~pipelines.stable_diffusion_3.StableDiffusion3PipelineOutput`] or `tuple`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        if mask_img is not None:  # editforge: UltraEdit's name for the mask
            if mask_image is not None:
                raise ValueError("give `mask_image` or `mask_img` (UltraEdit's name for it), not both")
            mask_image = mask_img

        # editforge: the output size is the image's unless height / width are given (then it is resized)
        if image is None:
            raise ValueError("`image` is required: the source image to edit")
        image_height, image_width = self._image_size(image)
        height = height or image_height
        width = width or image_width
        self.check_image_size(height, width)

        # 1. Check inputs. Raise error if not correct
        self.check_inputs(
            prompt,
            prompt_2,
            prompt_3,
            height,
            width,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_sequence_length=max_sequence_length,
        )

        self._guidance_scale = guidance_scale
        self._image_guidance_scale = image_guidance_scale
        self._skip_layer_guidance_scale = None
        self._clip_skip = clip_skip
        self._joint_attention_kwargs = joint_attention_kwargs
        self._interrupt = False

        # 2. Define call parameters
        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None and isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]

        device = self._execution_device

        lora_scale = (
            self.joint_attention_kwargs.get("scale", None) if self.joint_attention_kwargs is not None else None
        )
        (
            prompt_embeds,
            negative_prompt_embeds,
            pooled_prompt_embeds,
            negative_pooled_prompt_embeds,
        ) = self.encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            prompt_3=prompt_3,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            device=device,
            clip_skip=self.clip_skip,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
            lora_scale=lora_scale,
        )

        # editforge: InstructPix2Pix's branches [text, negative, negative] (the last one with a zero image)
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([prompt_embeds, negative_prompt_embeds, negative_prompt_embeds], dim=0)
            pooled_prompt_embeds = torch.cat(
                [pooled_prompt_embeds, negative_pooled_prompt_embeds, negative_pooled_prompt_embeds], dim=0
            )

        # 4. Prepare latent variables
        num_channels_latents = self.latent_channels
        latents = self.prepare_latents(
            batch_size * num_images_per_prompt,
            num_channels_latents,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )

        # editforge: the condition latents (source image, and the mask for a mask-conditioned transformer)
        image_latents, mask_latents = self.prepare_image_latents(
            image, mask_image, batch_size, num_images_per_prompt, height, width, prompt_embeds.dtype, device, generator
        )
        if image_latents.shape[-2:] != latents.shape[-2:]:
            raise ValueError(
                f"`latents` are {tuple(latents.shape[-2:])} but the image latents {tuple(image_latents.shape[-2:])}:"
                " give latents of the image's size / vae_scale_factor"
            )
        if self.do_classifier_free_guidance:
            image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)], dim=0)
            if mask_latents is not None:
                mask_latents = torch.cat([mask_latents, mask_latents, torch.zeros_like(mask_latents)], dim=0)

        # 5. Prepare timesteps
        scheduler_kwargs = {}
        if self.scheduler.config.get("use_dynamic_shifting", None) and mu is None:
            _, _, latent_height, latent_width = latents.shape
            image_seq_len = (latent_height // self.transformer.config.patch_size) * (
                latent_width // self.transformer.config.patch_size
            )
            mu = calculate_shift(
                image_seq_len,
                self.scheduler.config.get("base_image_seq_len", 256),
                self.scheduler.config.get("max_image_seq_len", 4096),
                self.scheduler.config.get("base_shift", 0.5),
                self.scheduler.config.get("max_shift", 1.16),
            )
            scheduler_kwargs["mu"] = mu
        elif mu is not None:
            scheduler_kwargs["mu"] = mu
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler,
            num_inference_steps,
            device,
            sigmas=sigmas,
            **scheduler_kwargs,
        )
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        self._num_timesteps = len(timesteps)

        # 6. Prepare image embeddings
        if (ip_adapter_image is not None and self.is_ip_adapter_active) or ip_adapter_image_embeds is not None:
            ip_adapter_image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image,
                ip_adapter_image_embeds,
                device,
                batch_size * num_images_per_prompt,
                self.do_classifier_free_guidance,
            )
            if self.do_classifier_free_guidance:
                # editforge: SD3 gives [negative, positive]; the branches are [text, negative, negative]
                negative_image_embeds, positive_image_embeds = ip_adapter_image_embeds.chunk(2)
                ip_adapter_image_embeds = torch.cat([positive_image_embeds, negative_image_embeds, negative_image_embeds])

            if self.joint_attention_kwargs is None:
                self._joint_attention_kwargs = {"ip_adapter_image_embeds": ip_adapter_image_embeds}
            else:
                self._joint_attention_kwargs.update(ip_adapter_image_embeds=ip_adapter_image_embeds)

        # 7. Denoising loop
        samples = latents.shape[0]
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue

                # editforge: guidance is read at every step (a callback may turn it off: then the text
                # branch, the first of the three, is the only one run)
                num_branches = 3 if self.do_classifier_free_guidance else 1
                rows = num_branches * samples
                latent_model_input = torch.cat([latents] * num_branches) if num_branches > 1 else latents
                # broadcast to batch dimension in a way that's compatible with ONNX/Core ML
                timestep = t.expand(latent_model_input.shape[0])
                # editforge: concat latents, image latents (and mask latents) in the channel dimension
                conditions = [latent_model_input, image_latents[:rows]]
                if mask_latents is not None:
                    conditions.append(mask_latents[:rows])
                latent_model_input = torch.cat(conditions, dim=1)

                noise_pred = self.transformer(
                    hidden_states=latent_model_input,
                    timestep=timestep,
                    encoder_hidden_states=prompt_embeds[:rows],
                    pooled_projections=pooled_prompt_embeds[:rows],
                    joint_attention_kwargs=self.joint_attention_kwargs,
                    return_dict=False,
                )[0]

                # perform guidance (editforge: InstructPix2Pix's three branches)
                if num_branches == 3:
                    noise_pred_text, noise_pred_image, noise_pred_uncond = noise_pred.chunk(3)
                    noise_pred = (
                        noise_pred_uncond
                        + self.guidance_scale * (noise_pred_text - noise_pred_image)
                        + self.image_guidance_scale * (noise_pred_image - noise_pred_uncond)
                    )

                # compute the previous noisy sample x_t -> x_t-1
                latents_dtype = latents.dtype
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                if latents.dtype != latents_dtype:
                    if torch.backends.mps.is_available():
                        # some platforms (eg. apple mps) misbehave due to a pytorch bug: https://github.com/pytorch/pytorch/pull/99272
                        latents = latents.to(latents_dtype)

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)

                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    pooled_prompt_embeds = callback_outputs.pop("pooled_prompt_embeds", pooled_prompt_embeds)
                    image_latents = callback_outputs.pop("image_latents", image_latents)
                    mask_latents = callback_outputs.pop("mask_latents", mask_latents)

                # call the callback, if provided
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        if output_type == "latent":
            image = latents
        else:
            # editforge: UltraEdit's latents ("unscaled") were trained without shift_factor
            latents = latents / self.vae.config.scaling_factor
            if self.config.image_latents_normalization == "scaled_shifted":
                latents = latents + self.vae.config.shift_factor
            latents = latents.to(dtype=self.vae.dtype)

            image = self.vae.decode(latents, return_dict=False)[0]
            image = self.image_processor.postprocess(image, output_type=output_type)

        # Offload all models
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)

        return StableDiffusion3PipelineOutput(images=image)

    # ----------------------------------------------------------------------------------------------
    # Loading with the installed code

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        r"""Load with this class's code; a repo's own code files are never run, so no trust flag is needed.

        Accepts a repo published with its own ``pipeline.py`` (model_index ``_class_name: ["pipeline",
        ...]``: the weights and configs are loaded into this class instead), UltraEdit's checkpoints
        (``_class_name: "StableDiffusion3InstructPix2PixPipeline"``) and any SD3 InstructPix2Pix folder.
        Every other argument is [`DiffusionPipeline.from_pretrained`]'s; with ``custom_pipeline`` or
        ``trust_remote_code=True`` the call is diffusers' own.
        """
        if kwargs.get("custom_pipeline") is not None or kwargs.get("trust_remote_code"):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir():
            model_index = folder / "model_index.json"
        else:
            from huggingface_hub import hf_hub_download

            model_index = Path(hf_hub_download(str(pretrained_model_name_or_path), "model_index.json", **hub_kwargs))
        index = json.loads(model_index.read_text(encoding="utf-8"))
        if not isinstance(index.get("_class_name"), list):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

        # A repo that ships its own code: point its model_index at this class instead.
        for name, entry in index.items():
            if not name.startswith("_") and isinstance(entry, list) and entry and entry[0] not in (None, "diffusers",
                                                                                                 "transformers"):
                raise ValueError(
                    f"component {name!r} of {pretrained_model_name_or_path} is custom code ({entry[0]}.{entry[1]});"
                    " load it with DiffusionPipeline.from_pretrained(..., trust_remote_code=True)"
                )
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(pretrained_model_name_or_path), ignore_patterns=["*.py"], **hub_kwargs))
        with tempfile.TemporaryDirectory(prefix="sd3-pix2pix-") as view:
            for item in folder.iterdir():
                if item.name == "model_index.json" or (item.is_file() and item.suffix == ".py"):
                    continue
                os.symlink(item.resolve(), Path(view) / item.name, target_is_directory=item.is_dir())
            rewritten = {**index, "_class_name": cls.__name__}
            (Path(view) / "model_index.json").write_text(json.dumps(rewritten, indent=2), encoding="utf-8")
            loading_kwargs = {key: value for key, value in kwargs.items() if key not in _HUB_KWARGS}
            pipeline = super().from_pretrained(view, **loading_kwargs)
        pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipeline
