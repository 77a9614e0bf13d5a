"""RewardConditionedPix2PixPipeline: InstructPix2Pix with multi-reward conditioning (arXiv 2411.04713).

The pipeline is diffusers' ``StableDiffusionInstructPix2PixPipeline`` (same components, same call,
same LoRA / textual-inversion / IP-adapter loaders) plus one component, ``reward_conditioner``, and
four call arguments:

* ``rewards``: the target scores, 0..5 per perspective (instruction following, detail preserving,
  generation quality); default all 5;
* ``reward_feedback``: the failure text per perspective; default none ("None; None; None");
* ``reward_feedback_embeds``: the feedback precomputed (pooled text embeddings), for a pipeline
  loaded without a text encoder, as ``prompt_embeds`` is for the prompt;
* ``reward_guidance_scale``: guidance over the reward (1.0, the default, is off and costs nothing;
  above 1 adds one UNet branch with the learned null reward).

This file is self-contained (torch, diffusers, transformers): it is published as a Hub repo's
``pipeline.py`` and reaches the conditioner only through the ``reward_conditioner`` component.

Loading::

    # 1. a published repo (its own pipeline.py and reward_conditioner/reward_module.py)
    DiffusionPipeline.from_pretrained("org/reward-pix2pix", trust_remote_code=True)
    # 2. the code on top of a plain InstructPix2Pix repo
    DiffusionPipeline.from_pretrained("timbrooks/instruct-pix2pix", custom_pipeline="org/reward-pix2pix",
                                      trust_remote_code=True, reward_conditioner=conditioner)
    # 3. the installed package (editforge): no trust flag, the repo's code files are not run
    RewardConditionedPix2PixPipeline.from_pretrained("org/reward-pix2pix")
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import PIL.Image
import torch
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput
from diffusers.models import AutoencoderKL, ModelMixin, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_instruct_pix2pix import (
    StableDiffusionInstructPix2PixPipeline,
    retrieve_latents,
)
from diffusers.schedulers import KarrasDiffusionSchedulers

_IMAGE_TYPES = (PIL.Image.Image, np.ndarray, torch.Tensor)
# Hub download settings that only matter for resolving a repo id to a local folder.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision")


class RewardConditionedPix2PixPipeline(StableDiffusionInstructPix2PixPipeline):
    r"""Instruction-based image editing with InstructPix2Pix conditioned on target rewards.

    Components are those of [`StableDiffusionInstructPix2PixPipeline`] plus:
        reward_conditioner ([`RewardConditioner`]):
            Embeds reward scores and failure text into the UNet's time embedding and, after ``conv_in``,
            into its latent features. Its widths must match the UNet's (``RewardConditioner.from_unet``).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    # The conditioner runs inside the UNet's forward (hooks), so it stays on the execution device.
    _exclude_from_cpu_offload = ["safety_checker", "reward_conditioner"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        reward_conditioner: ModelMixin,
        safety_checker: ModelMixin | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        requires_safety_checker: bool = True,
    ):
        super().__init__(
            vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor, image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        if reward_conditioner is not None and unet is not None:
            reward_conditioner.check_unet(unet)
        self.register_modules(reward_conditioner=reward_conditioner)

    @property
    def reward_guidance_scale(self):
        return self._reward_guidance_scale

    @property
    def do_reward_guidance(self):
        return self._reward_guidance_scale > 1.0

    # ----------------------------------------------------------------------------------------------
    # Input checks and reward preparation

    @staticmethod
    def check_image(image) -> None:
        items = image if isinstance(image, list) else [image]
        if not items or not all(isinstance(item, _IMAGE_TYPES) for item in items):
            if isinstance(image, list):
                found = f"a list holding {type(items[0]).__name__ if items else 'nothing'}"
            else:
                found = type(image).__name__
            raise TypeError(
                f"`image` must be a PIL image, a numpy array, a torch tensor or a list of them, got {found}"
            )

    def prepare_reward_scores(self, rewards, batch_size: int, num_images_per_prompt: int, device) -> torch.Tensor:
        """Target scores as a float tensor [batch_size * num_images_per_prompt, num_perspectives].

        ``rewards`` is ``None`` (every score at its maximum), a dict {perspective: score} (missing
        perspectives at the maximum), a sequence of one score per perspective, or a tensor/array
        [num_perspectives] or [batch_size, num_perspectives].
        """
        perspectives = list(self.reward_conditioner.config.perspectives)
        max_score = float(self.reward_conditioner.config.max_score)
        if rewards is None:
            rewards = {}
        if isinstance(rewards, Mapping):
            unknown = [name for name in rewards if name not in perspectives]
            if unknown:
                raise ValueError(f"`rewards`: unknown perspective {unknown[0]!r}; expected {', '.join(perspectives)}")
            rewards = [rewards.get(name, max_score) for name in perspectives]
        try:
            scores = torch.as_tensor(rewards).detach().to("cpu", torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"`rewards` must be a dict {{perspective: score}}, a list of {len(perspectives)} scores or a tensor"
                f" [batch, {len(perspectives)}], got {type(rewards).__name__}"
            ) from None
        scores = _one_row_per_prompt(
            scores, batch_size, "rewards", len(perspectives),
            f"must hold {len(perspectives)} scores ({', '.join(perspectives)}) per prompt",
        )
        outside = ~((scores >= 0) & (scores <= max_score))  # NaN counts as outside
        if outside.any():
            row, column = outside.nonzero()[0].tolist()
            raise ValueError(
                f"`rewards`: {perspectives[column]} = {scores[row, column].item():g} is outside 0..{max_score:g}"
            )
        return scores.repeat_interleave(num_images_per_prompt, dim=0).to(device)

    def prepare_reward_feedback(
        self, reward_feedback, batch_size: int, num_images_per_prompt: int, device, reward_feedback_embeds=None
    ) -> torch.Tensor:
        """Pooled feedback embeddings [batch_size * num_images_per_prompt, feedback_dim].

        ``reward_feedback`` is ``None`` (no failures), a dict {perspective: failure text}, an already
        joined string ("None; the circle is green; None"), or a list of those, one per prompt; it is
        encoded with the pipeline's tokenizer and text encoder. ``reward_feedback_embeds`` instead gives
        the embeddings precomputed: a tensor [feedback_dim], [1, feedback_dim] or
        [batch_size, feedback_dim] (``RewardConditioner.encode_feedback(tokenizer, text_encoder, texts)``).
        """
        conditioner = self.reward_conditioner
        if reward_feedback_embeds is not None:
            if reward_feedback is not None:
                raise ValueError("give `reward_feedback` or `reward_feedback_embeds`, not both")
            return self._check_reward_feedback_embeds(reward_feedback_embeds, batch_size).repeat_interleave(
                num_images_per_prompt, dim=0
            ).to(device)
        if self.text_encoder is None or self.tokenizer is None:
            missing = "text_encoder" if self.text_encoder is None else "tokenizer"
            raise ValueError(
                f"the pipeline has no {missing} to encode the reward feedback with (the default one included):"
                " pass `reward_feedback_embeds`, the pooled feedback embeddings [batch, feedback_dim] from"
                " `pipe.reward_conditioner.encode_feedback(tokenizer, text_encoder, texts)`, as `prompt_embeds`"
                " stands for the prompt"
            )
        if reward_feedback is None or isinstance(reward_feedback, (str, Mapping)):
            reward_feedback = [reward_feedback] * batch_size
        elif not isinstance(reward_feedback, (list, tuple)):
            raise TypeError(
                f"`reward_feedback` must be a dict {{perspective: text}}, a string or a list of them, got"
                f" {type(reward_feedback).__name__}"
            )
        elif len(reward_feedback) != batch_size:
            raise ValueError(f"`reward_feedback` has {len(reward_feedback)} entries for {batch_size} prompts")
        try:
            texts = [conditioner.join_feedback(item, conditioner.config.perspectives) for item in reward_feedback]
        except (TypeError, ValueError) as err:
            raise type(err)(f"`reward_feedback`: {err}") from None
        unique = list(dict.fromkeys(texts))
        embeds = conditioner.encode_feedback(self.tokenizer, self.text_encoder, unique)
        embeds = embeds[[unique.index(text) for text in texts]]
        return embeds.repeat_interleave(num_images_per_prompt, dim=0).to(device)

    def _check_reward_feedback_embeds(self, embeds, batch_size: int) -> torch.Tensor:
        """``reward_feedback_embeds`` as a tensor [batch_size, feedback_dim], or a clear error."""
        feedback_dim = self.reward_conditioner.config.feedback_dim
        if not isinstance(embeds, torch.Tensor):
            raise TypeError(
                f"`reward_feedback_embeds` must be a tensor [batch, {feedback_dim}], got {type(embeds).__name__}"
            )
        return _one_row_per_prompt(
            embeds, batch_size, "reward_feedback_embeds", feedback_dim,
            f"must have shape [batch, {feedback_dim}] (the conditioner's feedback_dim)",
        )

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_instruct_pix2pix.StableDiffusionInstructPix2PixPipeline.prepare_image_latents
    # (diffusers 0.42.1): one image per prompt is repeated per prompt, not tiled; errors reworded.
    def prepare_image_latents(
        self, image, batch_size, num_images_per_prompt, dtype, device, do_classifier_free_guidance, generator=None
    ):
        """Like the parent's, except that with several prompts each image stays with its own prompt
        for every ``num_images_per_prompt`` copy (the parent tiles the images instead)."""
        image = image.to(device=device, dtype=dtype)
        if image.shape[1] == self.vae.config.latent_channels:
            image_latents = image
        else:
            image_latents = retrieve_latents(self.vae.encode(image), sample_mode="argmax")

        total = batch_size * num_images_per_prompt
        if image_latents.shape[0] == batch_size:
            image_latents = image_latents.repeat_interleave(num_images_per_prompt, dim=0)
        elif image_latents.shape[0] == 1:
            image_latents = torch.cat([image_latents] * total, dim=0)
        elif image_latents.shape[0] != total:
            raise ValueError(
                f"got {image_latents.shape[0]} images for {batch_size} prompts; give one image or one per prompt"
            )

        if do_classifier_free_guidance:
            uncond_image_latents = torch.zeros_like(image_latents)
            image_latents = torch.cat([image_latents, image_latents, uncond_image_latents], dim=0)
        return image_latents

    def prepare_reward_branches(self, reward_scores, reward_embeds, do_classifier_free_guidance, do_reward_guidance):
        """Rewards of the UNet batch: ``(num_branches, scores, feedback_embeds, drop)``.

        The branches are [text, image, unconditional] with classifier-free guidance (the text branch
        alone without), all with the target rewards; reward guidance adds one more text branch with the
        null reward (``drop``).
        """
        num_branches = 3 if do_classifier_free_guidance else 1
        samples = reward_scores.shape[0]
        branch_scores = reward_scores.repeat(num_branches, 1)
        branch_embeds = reward_embeds.repeat(num_branches, 1)
        drop = torch.zeros(num_branches * samples, dtype=torch.bool, device=reward_scores.device)
        if do_reward_guidance:
            num_branches += 1
            branch_scores = torch.cat([branch_scores, reward_scores])
            branch_embeds = torch.cat([branch_embeds, reward_embeds])
            drop = torch.cat([drop, torch.ones(samples, dtype=torch.bool, device=reward_scores.device)])
        return num_branches, branch_scores, branch_embeds, drop

    # ----------------------------------------------------------------------------------------------

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_instruct_pix2pix.StableDiffusionInstructPix2PixPipeline.__call__
    # (diffusers 0.42.1). Differences, each marked "editforge:" below: the reward arguments and their
    # preparation; image checks and image pairing (`check_image`, `prepare_image_latents`); the UNet runs
    # inside `reward_conditioner.conditioning`, set up again whenever the branches change; an optional
    # reward-guidance branch; the deprecated `callback` / `callback_steps` arguments are not taken.
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = None,
        image: PipelineImageInput = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[int, int], None] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        cross_attention_kwargs: dict[str, Any] | None = None,
        rewards: Mapping[str, float] | Sequence[float] | torch.Tensor | None = None,
        reward_feedback: Mapping[str, str] | str | list | None = None,
        reward_guidance_scale: float = 1.0,
        reward_feedback_embeds: torch.Tensor | None = None,
    ):
        r"""Edit ``image`` following ``prompt``, aiming at the target ``rewards``.

        Takes every argument of [`StableDiffusionInstructPix2PixPipeline.__call__`] (see there) plus:

        Args:
            rewards (`dict`, `list` or `torch.Tensor`, *optional*):
                Target scores 0..5: a dict such as ``{"instruction_following": 5, "detail_preserving": 4}``
                (missing perspectives at 5), a list of three scores, or a tensor [3] or [batch, 3].
                Defaults to 5 for every perspective, as the paper does at inference.
            reward_feedback (`dict`, `str` or `list`, *optional*):
                Failure text per perspective (``{"generation_quality": "blurry"}``), an already joined
                string, or a list with one of those per prompt. Defaults to no failures. Encoded with the
                pipeline's tokenizer and text encoder.
            reward_guidance_scale (`float`, *optional*, defaults to 1.0):
                Guidance over the reward against the learned null reward. 1.0 turns it off (no extra
                UNet batch); above 1.0 adds one conditional branch and pushes towards the target rewards.
            reward_feedback_embeds (`torch.Tensor`, *optional*):
                The feedback precomputed instead of ``reward_feedback``: pooled embeddings [feedback_dim] or
                [batch, feedback_dim], e.g. ``pipe.reward_conditioner.encode_feedback(tokenizer, text_encoder,
                texts)``. Needed when the pipeline has no text encoder (``text_encoder=None`` with
                ``prompt_embeds``); default feedback is encoded with the pipeline's text encoder too.

        Classifier-free guidance and reward guidance are read at every step, as in diffusers: a
        ``callback_on_step_end`` may turn either off mid-run (setting ``pipe._guidance_scale`` or
        ``pipe._reward_guidance_scale`` and returning ``prompt_embeds`` and ``image_latents`` cut to the
        first third, the text branch, when it turns classifier-free guidance off).

        Returns:
            [`~pipelines.stable_diffusion.StableDiffusionPipelineOutput`] or `tuple`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 0. Check inputs
        self.check_inputs(
            prompt,
            None,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            ip_adapter_image,
            ip_adapter_image_embeds,
            callback_on_step_end_tensor_inputs,
        )
        # editforge: image and reward-guidance checks
        self.check_image(image)
        if not reward_guidance_scale >= 1.0:
            raise ValueError(f"`reward_guidance_scale` must be 1.0 (off) or more, got {reward_guidance_scale}")
        self._guidance_scale = guidance_scale
        self._image_guidance_scale = image_guidance_scale
        self._reward_guidance_scale = reward_guidance_scale

        # 1. Define call parameters
        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None and isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        device = self._execution_device

        # 2. Encode the rewards (editforge) and the input prompt
        reward_scores = self.prepare_reward_scores(rewards, batch_size, num_images_per_prompt, device)
        reward_embeds = self.prepare_reward_feedback(
            reward_feedback, batch_size, num_images_per_prompt, device, reward_feedback_embeds
        )
        prompt_embeds = self._encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
        )
        added_cond_kwargs = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image,
                ip_adapter_image_embeds,
                device,
                batch_size * num_images_per_prompt,
                self.do_classifier_free_guidance,
            )
            added_cond_kwargs = {"image_embeds": image_embeds}

        # 3. Preprocess image
        image = self.image_processor.preprocess(image)

        # 4. set timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 5. Prepare Image latents
        image_latents = self.prepare_image_latents(
            image,
            batch_size,
            num_images_per_prompt,
            prompt_embeds.dtype,
            device,
            self.do_classifier_free_guidance,
        )
        height, width = image_latents.shape[-2:]
        height = height * self.vae_scale_factor
        width = width * self.vae_scale_factor

        # 6. Prepare latent variables
        num_channels_latents = self.vae.config.latent_channels
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

        # 7. Check that shapes of latents and image match the UNet channels
        num_channels_image = image_latents.shape[1]
        if num_channels_latents + num_channels_image != self.unet.config.in_channels:
            raise ValueError(
                f"the UNet expects {self.unet.config.in_channels} input channels, but the latents have"
                f" {num_channels_latents} and the image latents {num_channels_image}"
            )

        # 8. Prepare extra step kwargs.
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 9. editforge: the UNet batch is [text, image, unconditional] with classifier-free guidance (the
        # text branch alone without), plus one text branch with the null reward under reward guidance.
        samples = batch_size * num_images_per_prompt

        def with_null_reward_branch(tensor, do_reward_guidance):
            return torch.cat([tensor, tensor[:samples]]) if do_reward_guidance else tensor

        # 10. Denoising loop
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar, contextlib.ExitStack() as conditioning:
            branch_key = None
            for i, t in enumerate(timesteps):
                # editforge: both guidances are read at every step, as diffusers reads classifier-free
                # guidance (a callback may switch them); the rewards are embedded again only on a change.
                do_classifier_free_guidance = self.do_classifier_free_guidance
                do_reward_guidance = self.do_reward_guidance
                if (do_classifier_free_guidance, do_reward_guidance) != branch_key:
                    branch_key = (do_classifier_free_guidance, do_reward_guidance)
                    conditioning.close()
                    num_branches, *branch_rewards = self.prepare_reward_branches(
                        reward_scores, reward_embeds, do_classifier_free_guidance, do_reward_guidance
                    )
                    conditioning.enter_context(self.reward_conditioner.conditioning(self.unet, *branch_rewards))

                # Expand the latents if we are doing classifier free guidance.
                # The latents are expanded 3 times because for pix2pix the guidance
                # is applied for both the text and the input image.
                latent_model_input = torch.cat([latents] * num_branches) if num_branches > 1 else latents

                # concat latents, image_latents in the channel dimension
                scaled_latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                scaled_latent_model_input = torch.cat(
                    [scaled_latent_model_input, with_null_reward_branch(image_latents, do_reward_guidance)], dim=1
                )
                step_added_cond_kwargs = added_cond_kwargs
                if added_cond_kwargs is not None and do_reward_guidance:
                    step_added_cond_kwargs = {
                        "image_embeds": [with_null_reward_branch(e, True) for e in added_cond_kwargs["image_embeds"]]
                    }

                # predict the noise residual
                noise_pred = self.unet(
                    scaled_latent_model_input,
                    t,
                    encoder_hidden_states=with_null_reward_branch(prompt_embeds, do_reward_guidance),
                    added_cond_kwargs=step_added_cond_kwargs,
                    cross_attention_kwargs=cross_attention_kwargs,
                    return_dict=False,
                )[0]

                # perform guidance
                branch_preds = noise_pred.chunk(num_branches)
                noise_pred_text = branch_preds[0]
                if do_classifier_free_guidance:
                    noise_pred_image, noise_pred_uncond = branch_preds[1], branch_preds[2]
                    noise_pred = (
                        noise_pred_uncond
                        + self.guidance_scale * (noise_pred_text - noise_pred_image)
                        + self.image_guidance_scale * (noise_pred_image - noise_pred_uncond)
                    )
                # editforge: reward guidance against the null-reward branch
                if do_reward_guidance:
                    noise_pred_null_reward = branch_preds[-1]
                    if not do_classifier_free_guidance:
                        noise_pred = noise_pred_text
                    noise_pred = noise_pred + (self.reward_guidance_scale - 1.0) * (
                        noise_pred_text - noise_pred_null_reward
                    )

                # compute the previous noisy sample x_t -> x_t-1
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)

                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                    image_latents = callback_outputs.pop("image_latents", image_latents)

                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        if not output_type == "latent":
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            image, has_nsfw_concept = self.run_safety_checker(image, device, prompt_embeds.dtype)
        else:
            image = latents
            has_nsfw_concept = None

        if has_nsfw_concept is None:
            do_denormalize = [True] * image.shape[0]
        else:
            do_denormalize = [not has_nsfw for has_nsfw in has_nsfw_concept]

        image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)

        # Offload all models
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image, has_nsfw_concept)

        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=has_nsfw_concept)

    # ----------------------------------------------------------------------------------------------
    # Loading with the installed code

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        r"""Load with this class's code; a repo's own code files are never run, no trust flag needed.

        Accepts a published repo (``model_index.json`` naming its own ``pipeline.py`` and
        ``reward_conditioner/reward_module.py``: the weights and configs are loaded into the installed
        classes instead), a folder written by ``save_pretrained``, or a plain InstructPix2Pix repo
        together with ``reward_conditioner=...``. Every other argument is that of
        [`DiffusionPipeline.from_pretrained`]. With ``custom_pipeline`` or ``trust_remote_code=True``
        the call is diffusers' own.
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

        # A repo that ships its own code: point its model_index at the installed classes instead.
        if index["_class_name"][1] != cls.__name__:
            raise ValueError(f"{pretrained_model_name_or_path} holds a {index['_class_name'][1]}, not a {cls.__name__}")
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(pretrained_model_name_or_path), ignore_patterns=["*.py"], **hub_kwargs))
        with tempfile.TemporaryDirectory(prefix="reward-pix2pix-") as view:
            _installed_code_view(folder, index, cls, Path(view))
            loading_kwargs = {key: value for key, value in kwargs.items() if key not in _HUB_KWARGS}
            pipeline = super().from_pretrained(view, **loading_kwargs)
        pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipeline


def _one_row_per_prompt(values: torch.Tensor, batch_size: int, name: str, width: int, expected: str) -> torch.Tensor:
    """``values`` ([width], [1, width] or [batch_size, width]) as [batch_size, width], or a ValueError
    naming the argument ``name`` and what it ``expected``."""
    if values.ndim == 1:
        values = values.unsqueeze(0)
    if values.ndim != 2 or values.shape[1] != width:
        raise ValueError(f"`{name}` {expected}, got shape {tuple(values.shape)}")
    if values.shape[0] == 1:
        return values.expand(batch_size, -1)
    if values.shape[0] != batch_size:
        raise ValueError(f"`{name}` has {values.shape[0]} rows for {batch_size} prompts")
    return values


def _installed_code_view(folder: Path, index: dict, pipeline_class: type, view: Path) -> None:
    """Fill ``view`` with links to ``folder``'s files, minus its code, and a model_index.json that
    names ``pipeline_class`` and the installed ``RewardConditioner`` (a module beside this file)."""
    conditioner_module = importlib.import_module(".reward_conditioner", __package__)
    rewritten = {**index, "_class_name": pipeline_class.__name__}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        if (folder / name / f"{entry[0]}.py").is_file():
            if entry[1] != "RewardConditioner":
                raise ValueError(
                    f"component {name!r} is custom code ({name}/{entry[0]}.py, class {entry[1]}); load it with"
                    " DiffusionPipeline.from_pretrained(..., trust_remote_code=True)"
                )
            rewritten[name] = [conditioner_module.__name__, "RewardConditioner"]
    for item in folder.iterdir():
        if item.name == "model_index.json" or (item.is_file() and item.suffix == ".py"):
            continue
        os.symlink(item.resolve(), view / item.name, target_is_directory=item.is_dir())
    (view / "model_index.json").write_text(json.dumps(rewritten, indent=2), encoding="utf-8")
