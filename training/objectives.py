"""The training objectives every editforge trainer draws from, in one module.

Two families, each a handful of small functions a trainer's ``compute_loss(batch, generator)``
calls in order (noise first, then timesteps, as diffusers' scripts do):

- **DDPM** (SD1.5 / SDXL InstructPix2Pix UNets): :func:`noise_like`, :func:`sample_timesteps`,
  ``scheduler.add_noise``, :func:`target_for` (epsilon or v-prediction), :func:`diffusion_loss`
  (MSE, optionally min-SNR weighted, Hang et al. 2023);
- **rectified flow matching** (SD3 transformers), as diffusers' SD3 scripts train it
  (examples/dreambooth/train_dreambooth_lora_sd3.py): :func:`timestep_density` (uniform,
  logit-normal, mode), :func:`sample_flow_matching_timesteps` (indices into the
  ``FlowMatchEulerDiscreteScheduler``'s training timesteps and shifted sigmas),
  :func:`flow_matching_noisy` ``(1 - sigma) * x0 + sigma * noise``, :func:`flow_matching_target`
  ``noise - x0``, :func:`flow_matching_weighting` (sigma_sqrt, cosmap, none) and
  :func:`weighted_mse` / :func:`flow_matching_loss`. :func:`flow_matching_batch` does the lot.

Every random draw takes an explicit ``torch.Generator`` (the trainer seeds a CPU one per step)
and never touches the global RNG; draws are made on the CPU and then moved to the training device,
so a seed gives the same numbers whatever device trains. Nothing here imports diffusers: the formulas of
``diffusers.training_utils.compute_density_for_timestep_sampling`` and
``compute_loss_weighting_for_sd3`` are restated (tests check them against diffusers').

Scheme names are diffusers' ``--weighting_scheme`` values, so one flag can drive both the
timestep density and the loss weighting as in diffusers' scripts: ``logit_normal`` and ``mode``
shape the density (loss weight 1); ``sigma_sqrt`` and ``cosmap`` weight the loss (uniform
density); ``none`` (or ``uniform``) is uniform with weight 1.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import NamedTuple

import torch

# ---------------------------------------------------------------------------------------------
# DDPM: epsilon / v-prediction, min-SNR
# ---------------------------------------------------------------------------------------------


def sample_timesteps(scheduler, batch: int, generator: torch.Generator, device) -> torch.Tensor:
    """Uniform integer timesteps in ``[0, num_train_timesteps)``, drawn on the CPU, moved to ``device``."""
    steps = scheduler.config.num_train_timesteps
    return torch.randint(0, steps, (batch,), generator=generator).to(device)


def noise_like(latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise of ``latents``' shape, drawn in float32 on the CPU (a CPU generator),
    then moved to ``latents``' device and dtype."""
    return torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)


def target_for(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prediction_type: str):
    """What the model learns to predict: the noise, or the velocity (v-prediction)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``alpha_bar / (1 - alpha_bar)`` of a DDPM-family scheduler."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def diffusion_loss(prediction, target, scheduler=None, timesteps=None, snr_gamma: float | None = None,
                   prediction_type: str = "epsilon") -> torch.Tensor:
    """Mean squared error, optionally with min-SNR weighting (Hang et al., 2023)."""
    per_example = ((prediction.float() - target.float()) ** 2).mean(dim=tuple(range(1, prediction.ndim)))
    if snr_gamma is not None:
        ratio = snr(scheduler, timesteps)
        clipped = torch.clamp(ratio, max=snr_gamma)
        weight = clipped / (ratio + 1.0) if prediction_type == "v_prediction" else clipped / ratio
        per_example = per_example * weight
    return per_example.mean()


# ---------------------------------------------------------------------------------------------
# Rectified flow matching (SD3)
# ---------------------------------------------------------------------------------------------

DENSITY_SCHEMES = ("logit_normal", "mode")
LOSS_WEIGHTING_SCHEMES = ("sigma_sqrt", "cosmap")
WEIGHTING_SCHEMES = ("logit_normal", "mode", "sigma_sqrt", "cosmap", "none", "uniform")
# diffusers' SD3 script defaults (--logit_mean, --logit_std, --mode_scale)
LOGIT_MEAN, LOGIT_STD, MODE_SCALE = 0.0, 1.0, 1.29


def _check_scheme(weighting_scheme: str) -> None:
    if weighting_scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"unknown weighting scheme {weighting_scheme!r}; choose one of {', '.join(WEIGHTING_SCHEMES)}")


def timestep_density(weighting_scheme: str, batch: int, generator: torch.Generator, *,
                     logit_mean: float = LOGIT_MEAN, logit_std: float = LOGIT_STD, mode_scale: float = MODE_SCALE,
                     device=None) -> torch.Tensor:
    """``batch`` draws ``u`` in [0, 1] (float32), the position in the training schedule.

    - ``logit_normal``: ``u = sigmoid(N(logit_mean, logit_std))``;
    - ``mode``: ``u0 ~ U[0, 1)``, ``u = 1 - u0 - mode_scale * (cos(pi * u0 / 2) ** 2 - 1 + u0)``;
    - anything else diffusers accepts (``sigma_sqrt``, ``cosmap``, ``none``, ``uniform``): ``U[0, 1)``.

    The same numbers as ``diffusers.training_utils.compute_density_for_timestep_sampling`` with the
    same generator; drawn on the generator's device, then moved to ``device``.
    """
    _check_scheme(weighting_scheme)
    on = generator.device
    if weighting_scheme == "logit_normal":
        u = torch.normal(mean=logit_mean, std=logit_std, size=(batch,), device=on, generator=generator)
        u = torch.nn.functional.sigmoid(u)
    elif weighting_scheme == "mode":
        u = torch.rand(size=(batch,), device=on, generator=generator)
        u = 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    else:
        u = torch.rand(size=(batch,), device=on, generator=generator)
    return u if device is None else u.to(device)


@lru_cache(maxsize=8)
def _fresh_schedule(class_path: tuple[str, str], config_json: str) -> tuple[torch.Tensor, torch.Tensor]:
    import importlib

    module, name = class_path
    scheduler = getattr(importlib.import_module(module), name).from_config(json.loads(config_json))
    return scheduler.timesteps.clone(), scheduler.sigmas.clone()


def flow_matching_schedule(scheduler) -> tuple[torch.Tensor, torch.Tensor]:
    """The training schedule of a ``FlowMatchEulerDiscreteScheduler``: its ``num_train_timesteps``
    timesteps (descending) and their sigmas, shift included, on the CPU.

    As diffusers' SD3 scripts do, they are the scheduler's own ``timesteps`` / ``sigmas`` as built
    at construction. A scheduler whose ``set_timesteps`` has run (a validation pipeline sharing it)
    holds an inference schedule instead; then the training schedule is rebuilt from its config
    (diffusers' scripts keep a deep copy for the same reason).
    """
    if not hasattr(scheduler, "sigmas") or "shift" not in scheduler.config:
        raise TypeError(f"flow matching needs a FlowMatchEulerDiscreteScheduler, not {type(scheduler).__name__}")
    if getattr(scheduler, "num_inference_steps", None) is None:
        return scheduler.timesteps, scheduler.sigmas
    config = json.dumps({k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")},
                        sort_keys=True, default=str)
    return _fresh_schedule((type(scheduler).__module__, type(scheduler).__name__), config)


def schedule_indices(u: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """``(u * N).long()`` as diffusers' SD3 scripts index the schedule, clamped to ``N - 1``: ``mode``
    gives ``u = 1`` at ``u0 = 0`` and ``logit_normal`` can round to 1.0 in float32, where diffusers'
    scripts would index past the end."""
    return (u * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


def sample_flow_matching_timesteps(scheduler, batch: int, generator: torch.Generator, device=None,
                                   weighting_scheme: str = "logit_normal", *, logit_mean: float = LOGIT_MEAN,
                                   logit_std: float = LOGIT_STD, mode_scale: float = MODE_SCALE
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(timesteps, sigmas)``, each of shape ``[batch]``: the transformer's timestep input and the
    noise level, both picked from the scheduler's training schedule at the sampled indices."""
    timesteps, sigmas = flow_matching_schedule(scheduler)
    u = timestep_density(weighting_scheme, batch, generator, logit_mean=logit_mean, logit_std=logit_std,
                         mode_scale=mode_scale)
    indices = schedule_indices(u, scheduler.config.num_train_timesteps).to(timesteps.device)
    return timesteps[indices].to(device), sigmas[indices].to(device)


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` (or already broadcastable) -> ``[B, 1, ..., 1]`` with ``like.ndim`` dimensions."""
    values = torch.as_tensor(values, device=like.device)
    if values.ndim == 1:
        values = values.reshape(-1, *([1] * (like.ndim - 1)))
    return values


def flow_matching_noisy(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) * x0 + sigma * noise`` (sigmas ``[B]`` or broadcastable), in ``latents``' dtype."""
    sigma = _per_example(sigmas, latents).to(latents.dtype)
    return (1.0 - sigma) * latents + sigma * noise


def flow_matching_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the transformer predicts: ``noise - x0``."""
    return noise - latents


def flow_matching_denoised(prediction: torch.Tensor, noisy: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``noisy - sigma * prediction``, the clean latents a velocity prediction implies (diffusers'
    ``--precondition_outputs``: compare it with ``x0`` instead of the velocity with its target;
    that equals the velocity loss weighted by ``sigma ** 2``)."""
    return noisy - _per_example(sigmas, noisy).to(noisy.dtype) * prediction


def flow_matching_weighting(weighting_scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """SD3's loss weight per example (float32, ``sigmas``' shape), as
    ``diffusers.training_utils.compute_loss_weighting_for_sd3``:
    ``sigma_sqrt``: ``sigma ** -2``; ``cosmap``: ``2 / (pi * (1 - 2 sigma + 2 sigma ** 2))``; else 1."""
    _check_scheme(weighting_scheme)
    sigmas = sigmas.float()
    if weighting_scheme == "sigma_sqrt":
        return sigmas ** -2.0
    if weighting_scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2))
    return torch.ones_like(sigmas)


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weighting: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example mean squared error, shape ``[B]``, in float32; ``weighting`` (``[B]`` or
    broadcastable) multiplies the squared error before the mean, as diffusers' SD3 scripts do.
    Take ``.mean()`` for the batch loss; Diffusion-DPO compares the per-example values."""
    squared = (prediction.float() - target.float()) ** 2
    if weighting is not None:
        squared = _per_example(weighting, squared).float() * squared
    return squared.mean(dim=tuple(range(1, squared.ndim)))


def flow_matching_loss(prediction: torch.Tensor, target: torch.Tensor, sigmas: torch.Tensor | None = None,
                       weighting_scheme: str = "none") -> torch.Tensor:
    """The batch loss: the mean over examples of :func:`weighted_mse` with SD3's weighting."""
    _check_scheme(weighting_scheme)
    if weighting_scheme in LOSS_WEIGHTING_SCHEMES:
        if sigmas is None:
            raise ValueError(f"weighting scheme {weighting_scheme!r} needs the sigmas")
        return weighted_mse(prediction, target, flow_matching_weighting(weighting_scheme, sigmas)).mean()
    return weighted_mse(prediction, target).mean()


class FlowMatchingBatch(NamedTuple):
    """One step's flow-matching inputs (``sigmas`` and ``weighting`` are ``[B]``)."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    noise: torch.Tensor
    target: torch.Tensor
    weighting: torch.Tensor


def flow_matching_batch(scheduler, latents: torch.Tensor, generator: torch.Generator,
                        weighting_scheme: str = "logit_normal", *, loss_weighting: str | None = None,
                        logit_mean: float = LOGIT_MEAN, logit_std: float = LOGIT_STD,
                        mode_scale: float = MODE_SCALE) -> FlowMatchingBatch:
    """Noise (first), timesteps and sigmas (second) from ``generator``, then the noisy latents, the
    target and the loss weights. The loss is ``weighted_mse(prediction, batch.target,
    batch.weighting).mean()``.

    ``weighting_scheme`` drives both the density and the loss weight, as diffusers' one flag does;
    pass ``loss_weighting`` (``none``, ``sigma_sqrt``, ``cosmap``) to choose the weight on its own,
    the density then being ``weighting_scheme`` (``uniform``, ``logit_normal``, ``mode``)."""
    weight_scheme = weighting_scheme if loss_weighting is None else loss_weighting
    _check_scheme(weight_scheme)
    noise = noise_like(latents, generator)
    timesteps, sigmas = sample_flow_matching_timesteps(
        scheduler, latents.shape[0], generator, latents.device, weighting_scheme,
        logit_mean=logit_mean, logit_std=logit_std, mode_scale=mode_scale)
    return FlowMatchingBatch(
        noisy=flow_matching_noisy(latents, noise, sigmas),
        timesteps=timesteps,
        sigmas=sigmas,
        noise=noise,
        target=flow_matching_target(latents, noise),
        weighting=flow_matching_weighting(weight_scheme, sigmas),
    )


# --------------------------------------------------------------------------------------------
# InstructPix2Pix conditioning dropout (Brooks et al., 2023), shared by the editing trainers


def ip2p_conditioning_dropout(batch: int, probability: float, generator: torch.Generator, device=None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(text_drop [B] bool, image_keep [B] float)``: one uniform draw per example drops the text
    alone, the image alone, or both, each with ``probability`` (draw < p: text; p..2p: both;
    2p..3p: image; diffusers' train_instruct_pix2pix), so the model learns the three branches that
    guidance at inference needs."""
    draw = torch.rand(batch, generator=generator).to(device)
    text_drop = draw < 2 * probability
    image_keep = 1.0 - ((draw >= probability) & (draw < 3 * probability)).float()
    return text_drop, image_keep


# --------------------------------------------------------------------------------------------
# Diffusion-DPO (Wallace et al., 2023)


def dpo_logits(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
               beta: float) -> torch.Tensor:
    """The implicit reward margin of the winner over the loser, per comparison:
    ``-(beta / 2) * ((model_w - ref_w) - (model_l - ref_l))``, from the per-example denoising errors
    (:func:`weighted_mse`) of the trained model and the reference on the preferred (w) and the
    other (l) image at the same noise and timestep.

    ``beta`` has the paper's meaning (``beta * T * omega(lambda_t)`` folded into one constant) and
    diffusers' SDXL script's: ``-0.5 * beta_dpo * (model_diff - ref_diff)``, default 5000. diffusers'
    SD1.5 script writes ``beta_dpo * ((ref_w - ref_l) - (model_w - model_l))`` with default 2500:
    the same strength, so its 2500 is 5000 here."""
    return -0.5 * beta * ((model_w.float() - ref_w.float()) - (model_l.float() - ref_l.float()))


def diffusion_dpo_loss(logits: torch.Tensor, ties: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(-log sigmoid(logits))``. A tie (``ties`` [B] bool: neither image preferred) counts
    both ways, ``-(log sigmoid(x) + log sigmoid(-x)) / 2``, so it pulls the two errors together and
    is never a win for either image."""
    per = -torch.nn.functional.logsigmoid(logits)
    if ties is not None:
        symmetric = -0.5 * (torch.nn.functional.logsigmoid(logits) + torch.nn.functional.logsigmoid(-logits))
        per = torch.where(ties, symmetric, per)
    return per.mean()
