"""training/objectives.py: DDPM (epsilon, v-prediction, min-SNR) and SD3 rectified flow matching,
each checked against its closed form and, where importable, against diffusers' own functions."""

import importlib
import math

import pytest
import torch

from editforge.training import objectives as obj


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _training_utils():
    try:
        return importlib.import_module("diffusers.training_utils")
    except ImportError as error:  # pragma: no cover - optional heavy dependencies
        pytest.skip(f"diffusers.training_utils not importable: {error}")


@pytest.fixture(scope="module")
def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@pytest.fixture(scope="module")
def flow():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)


# ----------------------------------------------------------------------------------- DDPM


def _ddpm_draws(module, scheduler, latents, seed):
    g = _generator(seed)
    noise = module.noise_like(latents, g)
    timesteps = module.sample_timesteps(scheduler, latents.shape[0], g, "cpu")
    return noise, timesteps


def test_ddpm_draws_come_from_the_generator_only(ddpm):
    latents = torch.zeros(3, 4, 8, 8)
    torch.manual_seed(123)  # the global RNG plays no part
    first = _ddpm_draws(obj, ddpm, latents, 5)
    torch.manual_seed(456)
    second = _ddpm_draws(obj, ddpm, latents, 5)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    g = _generator(5)
    assert torch.equal(first[0], torch.randn(latents.shape, generator=g))
    assert torch.equal(first[1], torch.randint(0, 1000, (3,), generator=g))
    assert first[1].dtype == torch.int64 and ((0 <= first[1]) & (first[1] < 1000)).all()


def test_ddpm_targets_snr_and_min_snr_weights_match_their_formulas(ddpm):
    latents = torch.randn(4, 4, 8, 8, generator=_generator(1))
    noise = torch.randn(4, 4, 8, 8, generator=_generator(2))
    prediction = torch.randn(4, 4, 8, 8, generator=_generator(3))
    timesteps = torch.tensor([0, 10, 500, 999])
    alpha_bar = ddpm.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)

    assert torch.equal(obj.target_for(ddpm, latents, noise, timesteps, "epsilon"), noise)
    velocity = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    torch.testing.assert_close(obj.target_for(ddpm, latents, noise, timesteps, "v_prediction"), velocity)
    with pytest.raises(ValueError, match="unsupported prediction type 'sample'"):
        obj.target_for(ddpm, latents, noise, timesteps, "sample")

    ratio = obj.snr(ddpm, timesteps)
    torch.testing.assert_close(ratio, alpha_bar.flatten() / (1 - alpha_bar.flatten()))
    torch.testing.assert_close(ratio, _training_utils().compute_snr(ddpm, timesteps))

    per_example = ((prediction - noise) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(obj.diffusion_loss(prediction, noise), per_example.mean())
    eps_weight = torch.clamp(ratio, max=5.0) / ratio
    torch.testing.assert_close(obj.diffusion_loss(prediction, noise, ddpm, timesteps, 5.0),
                               (per_example * eps_weight).mean())
    v_weight = torch.clamp(ratio, max=5.0) / (ratio + 1)
    torch.testing.assert_close(obj.diffusion_loss(prediction, noise, ddpm, timesteps, 5.0, "v_prediction"),
                               (per_example * v_weight).mean())


def test_ip2p_conditioning_dropout_partitions_one_draw():
    p = 0.2
    text_drop, image_keep = obj.ip2p_conditioning_dropout(10_000, p, _generator(4), "cpu")
    draw = torch.rand(10_000, generator=_generator(4))
    assert torch.equal(text_drop, draw < 2 * p)
    assert torch.equal(image_keep, 1.0 - ((draw >= p) & (draw < 3 * p)).float())
    text_only = text_drop & (image_keep == 1)
    both = text_drop & (image_keep == 0)
    image_only = ~text_drop & (image_keep == 0)
    assert torch.equal(text_only, draw < p) and torch.equal(both, (draw >= p) & (draw < 2 * p))
    assert torch.equal(image_only, (draw >= 2 * p) & (draw < 3 * p))
    for part in (text_only, both, image_only):
        assert abs(part.float().mean().item() - p) < 0.02
    assert text_drop.dtype == torch.bool and image_keep.dtype == torch.float32


# ---------------------------------------------------------------------- timestep densities


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "sigma_sqrt", "cosmap", "none"])
def test_densities_equal_diffusers_for_the_same_generator(scheme):
    compute_density = _training_utils().compute_density_for_timestep_sampling
    kwargs = dict(logit_mean=0.3, logit_std=1.4, mode_scale=1.29)
    ours = obj.timestep_density(scheme, 4096, _generator(11), **kwargs)
    theirs = compute_density(weighting_scheme=scheme, batch_size=4096, generator=_generator(11), **kwargs)
    assert ours.dtype == torch.float32 and ours.shape == (4096,)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_densities_match_their_closed_forms():
    # logit-normal: u = sigmoid(N(m, s)); its logit has mean m and std s
    u = obj.timestep_density("logit_normal", 50_000, _generator(0), logit_mean=-0.5, logit_std=0.8)
    z = torch.normal(mean=-0.5, std=0.8, size=(50_000,), generator=_generator(0))
    torch.testing.assert_close(u, torch.sigmoid(z), rtol=0, atol=1e-6)
    logit = torch.logit(u.double())
    assert abs(logit.mean().item() + 0.5) < 0.02 and abs(logit.std().item() - 0.8) < 0.02

    # mode: u = 1 - u0 - s * (cos(pi u0 / 2)^2 - 1 + u0), u0 uniform
    u0 = torch.rand(50_000, generator=_generator(1))
    expected = 1 - u0 - 1.29 * (torch.cos(math.pi * u0 / 2) ** 2 - 1 + u0)
    torch.testing.assert_close(obj.timestep_density("mode", 50_000, _generator(1), mode_scale=1.29), expected,
                               rtol=0, atol=1e-6)
    # mode_scale 0 is uniform (reversed); the density stays inside [0, 1]
    zero = obj.timestep_density("mode", 1000, _generator(2), mode_scale=0.0)
    torch.testing.assert_close(zero, 1 - torch.rand(1000, generator=_generator(2)))
    assert 0 <= expected.min() and expected.max() <= 1

    # uniform for the loss-weighting schemes and none
    for scheme in ("uniform", "none", "sigma_sqrt", "cosmap"):
        assert torch.equal(obj.timestep_density(scheme, 100, _generator(3)), torch.rand(100, generator=_generator(3)))
    with pytest.raises(ValueError, match="unknown weighting scheme 'gaussian'"):
        obj.timestep_density("gaussian", 4, _generator())


# ------------------------------------------------------------------------- flow schedule


def test_flow_matching_schedule_is_the_schedulers_own_with_shift(flow):
    from diffusers import FlowMatchEulerDiscreteScheduler

    timesteps, sigmas = obj.flow_matching_schedule(flow)
    assert timesteps is flow.timesteps and sigmas is flow.sigmas and len(sigmas) == 1000
    plain = torch.arange(1000, 0, -1, dtype=torch.float32) / 1000
    torch.testing.assert_close(sigmas, 3.0 * plain / (1 + 2.0 * plain))
    torch.testing.assert_close(timesteps, sigmas * 1000)

    # a scheduler a pipeline has run holds an inference schedule: the training one is rebuilt
    used = FlowMatchEulerDiscreteScheduler(shift=3.0)
    used.set_timesteps(2)
    again_t, again_s = obj.flow_matching_schedule(used)
    assert torch.equal(again_t, timesteps) and torch.equal(again_s, sigmas)

    from diffusers import DDPMScheduler

    with pytest.raises(TypeError, match="FlowMatchEulerDiscreteScheduler, not DDPMScheduler"):
        obj.flow_matching_schedule(DDPMScheduler())


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "none"])
def test_timesteps_and_sigmas_as_diffusers_sd3_script_picks_them(flow, scheme):
    """train_dreambooth_lora_sd3: indices = (u * N).long(); timesteps = schedule[indices]; sigmas
    looked up by timestep (get_sigmas)."""
    batch = 256
    timesteps, sigmas = obj.sample_flow_matching_timesteps(flow, batch, _generator(4), "cpu", scheme)
    u = obj.timestep_density(scheme, batch, _generator(4))
    indices = (u * flow.config.num_train_timesteps).long().clamp(max=999)
    expected_t = flow.timesteps[indices]
    step_indices = [(flow.timesteps == t).nonzero().item() for t in expected_t]
    assert torch.equal(timesteps, expected_t)
    assert torch.equal(sigmas, flow.sigmas[step_indices].flatten())
    assert sigmas.shape == (batch,) and timesteps.shape == (batch,)
    assert ((0 < sigmas) & (sigmas <= 1)).all()


def test_schedule_indices_never_run_past_the_end():
    # mode at u0 = 0 gives u = 1 exactly; (u * N).long() would index N
    assert obj.schedule_indices(torch.tensor([0.0, 0.5, 0.9999, 1.0]), 1000).tolist() == [0, 500, 999, 999]


# ---------------------------------------------------------------- noising, target, loss


def test_noisy_latents_and_velocity_target_identities(flow):
    x0 = torch.randn(4, 16, 8, 8, generator=_generator(1))
    noise = torch.randn(4, 16, 8, 8, generator=_generator(2))
    sigmas = torch.tensor([0.0, 0.25, 0.75, 1.0])
    noisy = obj.flow_matching_noisy(x0, noise, sigmas)
    target = obj.flow_matching_target(x0, noise)
    s = sigmas.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - s) * x0 + s * noise)
    assert torch.equal(noisy[0], x0[0]) and torch.equal(noisy[3], noise[3])
    assert torch.equal(target, noise - x0)
    torch.testing.assert_close(noisy - s * target, x0)          # x0 back from the velocity
    torch.testing.assert_close(noisy + (1 - s) * target, noise)  # and the noise
    # the exact velocity is what the sampler's Euler step integrates: one step lands on the path
    sigma, sigma_next = flow.sigmas[100], flow.sigmas[101]
    at = obj.flow_matching_noisy(x0, noise, sigma.repeat(4))
    step = at + (sigma_next - sigma) * target  # FlowMatchEulerDiscreteScheduler.step
    torch.testing.assert_close(step, obj.flow_matching_noisy(x0, noise, sigma_next.repeat(4)))
    # preconditioned outputs (diffusers' --precondition_outputs): the exact velocity gives x0
    torch.testing.assert_close(obj.flow_matching_denoised(target, noisy, sigmas), x0)
    # dtype follows the latents
    assert obj.flow_matching_noisy(x0.half(), noise.half(), sigmas).dtype == torch.float16


@pytest.mark.parametrize("scheme", ["sigma_sqrt", "cosmap", "none", "logit_normal", "mode"])
def test_loss_weighting_equals_diffusers_and_its_formula(scheme):
    sigmas = torch.linspace(0.01, 1.0, 100)
    ours = obj.flow_matching_weighting(scheme, sigmas)
    theirs = _training_utils().compute_loss_weighting_for_sd3(weighting_scheme=scheme, sigmas=sigmas)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=0)
    closed = {
        "sigma_sqrt": sigmas ** -2,
        "cosmap": 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2)),
    }.get(scheme, torch.ones(100))
    torch.testing.assert_close(ours, closed, rtol=1e-6, atol=0)


@pytest.mark.parametrize("scheme", ["sigma_sqrt", "cosmap", "logit_normal"])
def test_weighted_mse_and_loss_equal_diffusers_sd3_script(flow, scheme):
    compute_weighting = _training_utils().compute_loss_weighting_for_sd3
    prediction = torch.randn(4, 16, 8, 8, generator=_generator(1))
    target = torch.randn(4, 16, 8, 8, generator=_generator(2))
    _, sigmas = obj.sample_flow_matching_timesteps(flow, 4, _generator(3), "cpu", scheme)
    # the script: weighting of sigmas [B, 1, 1, 1], mean over each example, then over the batch
    w = compute_weighting(weighting_scheme=scheme, sigmas=sigmas.reshape(-1, 1, 1, 1))
    per_example = torch.mean((w.float() * (prediction.float() - target.float()) ** 2).reshape(4, -1), 1)
    ours = obj.weighted_mse(prediction, target, obj.flow_matching_weighting(scheme, sigmas))
    assert ours.shape == (4,)
    torch.testing.assert_close(ours, per_example, rtol=1e-6, atol=0)
    torch.testing.assert_close(obj.flow_matching_loss(prediction, target, sigmas, scheme), per_example.mean(),
                               rtol=1e-6, atol=0)
    # unweighted: the plain per-example MSE (the same numbers diffusion_loss averages)
    plain = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    assert torch.equal(obj.weighted_mse(prediction, target), plain)
    assert torch.equal(obj.diffusion_loss(prediction, target), plain.mean())
    with pytest.raises(ValueError, match="needs the sigmas"):
        obj.flow_matching_loss(prediction, target, None, "cosmap")


def test_flow_matching_batch_is_deterministic_and_consistent(flow):
    latents = torch.randn(3, 16, 8, 8, generator=_generator(9))
    torch.manual_seed(0)
    batch = obj.flow_matching_batch(flow, latents, _generator(5), "logit_normal", logit_mean=0.0, logit_std=1.0)
    torch.manual_seed(1)
    again = obj.flow_matching_batch(flow, latents, _generator(5))
    assert all(torch.equal(a, b) for a, b in zip(batch, again))
    # noise first, then the timesteps, from the one generator
    g = _generator(5)
    noise = torch.randn(latents.shape, generator=g)
    timesteps, sigmas = obj.sample_flow_matching_timesteps(flow, 3, g, "cpu", "logit_normal")
    assert torch.equal(batch.noise, noise) and torch.equal(batch.timesteps, timesteps)
    assert torch.equal(batch.sigmas, sigmas)
    assert torch.equal(batch.noisy, obj.flow_matching_noisy(latents, noise, sigmas))
    assert torch.equal(batch.target, noise - latents)
    assert torch.equal(batch.weighting, torch.ones(3))
    cosmap = obj.flow_matching_batch(flow, latents, _generator(5), "cosmap")
    torch.testing.assert_close(cosmap.weighting, obj.flow_matching_weighting("cosmap", cosmap.sigmas))
    # density and loss weight chosen apart: logit-normal draws, cosmap weights
    split = obj.flow_matching_batch(flow, latents, _generator(5), "logit_normal", loss_weighting="cosmap")
    assert torch.equal(split.sigmas, batch.sigmas)
    torch.testing.assert_close(split.weighting, obj.flow_matching_weighting("cosmap", batch.sigmas))
    uniform = obj.flow_matching_batch(flow, latents, _generator(5), "uniform", loss_weighting="none")
    assert torch.equal(uniform.weighting, torch.ones(3))
    with pytest.raises(ValueError, match="unknown weighting scheme 'cosine'"):
        obj.flow_matching_batch(flow, latents, _generator(5), "uniform", loss_weighting="cosine")
