"""RewardConditionedPix2PixPipeline: equal to diffusers' InstructPix2Pix when untrained, steered by
rewards when trained, one extra branch for reward guidance, clear errors, LoRA beside the conditioner."""

import numpy as np
import pytest
import torch
from PIL import Image

from editforge.pipelines import RewardConditionedPix2PixPipeline, RewardConditioner
from editforge.testing.tiny_models import save_tiny_unet_lora, tiny_reward_pix2pix_pipeline, tiny_unet

PROMPTS = ["make the red circle blue", "remove the green square"]


def images(count, size=32):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def edit(pipe, prompt="make the red circle blue", image=None, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    image = images(1)[0] if image is None else image
    return pipe(prompt, image=image, output_type="np", generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.fixture(scope="module")
def untrained():
    return tiny_reward_pix2pix_pipeline()


@pytest.fixture(scope="module")
def trained():
    return tiny_reward_pix2pix_pipeline(perturb=0.2)


@pytest.fixture(scope="module")
def reference(untrained):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    components = {k: v for k, v in untrained.components.items() if k != "reward_conditioner"}
    pipe = StableDiffusionInstructPix2PixPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler_name", ["EulerAncestralDiscreteScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler"])
@pytest.mark.parametrize(
    "batch, per_prompt, guidance",
    [(1, 1, 7.5), (2, 1, 7.5), (1, 2, 7.5), (2, 1, 1.0)],
    ids=["1x1", "2x1", "1x2", "2x1-no-cfg"],
)
def test_untrained_conditioner_reproduces_diffusers_instruct_pix2pix(untrained, reference, scheduler_name, batch, per_prompt, guidance):
    import diffusers

    scheduler = getattr(diffusers, scheduler_name).from_config(untrained.scheduler.config)
    untrained.scheduler = reference.scheduler = scheduler
    settings = dict(image=images(batch), num_inference_steps=3, guidance_scale=guidance, image_guidance_scale=1.5,
                    num_images_per_prompt=per_prompt, output_type="np")
    ours = untrained(PROMPTS[:batch], generator=torch.Generator().manual_seed(7), **settings).images
    theirs = reference(PROMPTS[:batch], generator=torch.Generator().manual_seed(7), **settings).images
    assert ours.shape == (batch * per_prompt, 32, 32, 3)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_several_prompts_with_several_images_each_keep_each_image_with_its_prompt(untrained, reference):
    """diffusers tiles the images ([i0, i1, i0, i1]) against repeated prompts ([p0, p0, p1, p1]);
    ours pairs them, which equals diffusers given the pairs explicitly."""
    pair = images(2)
    ours = untrained(PROMPTS, image=pair, num_images_per_prompt=2, num_inference_steps=2, output_type="np",
                     generator=torch.Generator().manual_seed(3)).images
    theirs = reference([PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, image=[pair[0]] * 2 + [pair[1]] * 2, num_inference_steps=2,
                       output_type="np", generator=torch.Generator().manual_seed(3)).images
    assert np.abs(ours - theirs).max() <= 1e-5


def test_rewards_and_feedback_steer_a_trained_conditioner(trained):
    default = edit(trained)
    assert np.array_equal(edit(trained, rewards=[5, 5, 5], reward_feedback="None; None; None"), default)
    low = edit(trained, rewards=[1, 5, 5])
    other = edit(trained, rewards={"generation_quality": 0})
    assert np.abs(low - default).max() > 1e-3 and np.abs(other - default).max() > 1e-3
    assert np.abs(low - other).max() > 1e-3
    # the three spellings of the same rewards agree
    as_dict = edit(trained, rewards={"instruction_following": 1, "detail_preserving": 5, "generation_quality": 5})
    as_tensor = edit(trained, rewards=torch.tensor([[1.0, 5.0, 5.0]]))
    assert np.array_equal(as_dict, low) and np.array_equal(as_tensor, low)
    feedback = edit(trained, reward_feedback={"generation_quality": "slight grain and noise across the image"})
    assert np.abs(feedback - default).max() > 1e-3


def test_rewards_per_prompt_apply_to_their_own_prompt(trained):
    both = trained(PROMPTS, image=images(2), rewards=torch.tensor([[5.0, 5, 5], [0, 0, 0]]), num_inference_steps=2,
                   output_type="np", generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]).images
    first = trained(PROMPTS[:1], image=images(2)[:1], rewards=[5, 5, 5], num_inference_steps=2, output_type="np",
                    generator=[torch.Generator().manual_seed(0)]).images
    second = trained(PROMPTS[1:], image=images(2)[1:], rewards=[0, 0, 0], num_inference_steps=2, output_type="np",
                     generator=[torch.Generator().manual_seed(1)]).images
    assert np.abs(both[0] - first[0]).max() <= 1e-5 and np.abs(both[1] - second[0]).max() <= 1e-5


@pytest.mark.parametrize("guidance, branches", [(7.5, 3), (1.0, 1)], ids=["cfg", "no-cfg"])
def test_reward_guidance_adds_exactly_one_conditional_branch_and_changes_the_result(trained, guidance, branches):
    calls = []

    def spy(module, args, kwargs):
        calls.append((args[0].shape[0], kwargs["encoder_hidden_states"]))

    drops = []
    original_forward = trained.reward_conditioner.forward

    def spy_forward(scores, feedback, drop=None):
        drops.append(drop.tolist())
        return original_forward(scores, feedback, drop)

    handle = trained.unet.register_forward_pre_hook(spy, with_kwargs=True)
    trained.reward_conditioner.forward = spy_forward
    try:
        off = edit(trained, guidance_scale=guidance, image_guidance_scale=1.5)
        sizes_off = {size for size, _ in calls}
        calls.clear()
        on = edit(trained, guidance_scale=guidance, image_guidance_scale=1.5, reward_guidance_scale=3.0)
    finally:
        handle.remove()
        del trained.reward_conditioner.forward
    assert sizes_off == {branches}
    assert {size for size, _ in calls} == {branches + 1}
    # the extra branch is the fully conditioned one (prompt and image), with the null reward
    text = calls[0][1]
    assert torch.equal(text[-1], text[0])
    assert drops == [[False] * branches, [False] * branches + [True]]
    assert np.abs(on - off).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"rewards": [5, 6, 5]}, ValueError, r"`rewards`: detail_preserving = 6 is outside 0\.\.5"),
        ({"rewards": {"instruction_following": -1}}, ValueError, r"instruction_following = -1 is outside 0\.\.5"),
        ({"rewards": [float("nan"), 5, 5]}, ValueError, r"instruction_following = nan is outside"),
        ({"rewards": {"quality": 5}}, ValueError, r"`rewards`: unknown perspective 'quality'; expected instruction_following"),
        ({"rewards": [5, 5]}, ValueError, r"must hold 3 scores \(instruction_following, detail_preserving, generation_quality\)"),
        ({"rewards": "high"}, TypeError, r"`rewards` must be a dict"),
        ({"reward_feedback": {"looks": "bad"}}, ValueError, r"`reward_feedback`: unknown reward perspective 'looks'"),
        ({"reward_feedback": ["a", "b"]}, ValueError, r"`reward_feedback` has 2 entries for 1 prompts"),
        ({"reward_guidance_scale": 0.5}, ValueError, r"`reward_guidance_scale` must be 1\.0 \(off\) or more"),
        ({"image": "photo.png"}, TypeError, r"`image` must be a PIL image, a numpy array, a torch tensor or a list of them, got str"),
        ({"image": [1, 2]}, TypeError, r"got a list holding int"),
        ({"reward_feedback_embeds": torch.zeros(5)}, ValueError, r"`reward_feedback_embeds` must have shape \[batch, 32\]"),
        ({"reward_feedback_embeds": torch.zeros(3, 32)}, ValueError, r"`reward_feedback_embeds` has 3 rows for 1 prompts"),
        ({"reward_feedback_embeds": [0.0] * 32}, TypeError, r"`reward_feedback_embeds` must be a tensor"),
        ({"reward_feedback": "blurry", "reward_feedback_embeds": torch.zeros(32)}, ValueError, r"not both"),
    ],
    ids=["score-high", "score-negative", "score-nan", "unknown-perspective", "two-scores", "string-rewards",
         "unknown-feedback-perspective", "feedback-count", "guidance-below-one", "image-path", "image-ints",
         "feedback-embeds-width", "feedback-embeds-rows", "feedback-embeds-list", "feedback-and-embeds"],
)
def test_bad_calls_raise_one_clear_error(untrained, kwargs, error, message):
    with pytest.raises(error, match=message):
        edit(untrained, **kwargs)


def test_conditioner_that_does_not_fit_the_unet_is_refused_at_construction(untrained):
    other = RewardConditioner.from_unet(tiny_unet(), feedback_dim=32, score_embed_dim=64)  # fits: widths are the UNet's
    components = {**untrained.components, "reward_conditioner": other}
    RewardConditionedPix2PixPipeline(**components, requires_safety_checker=False)
    wrong = RewardConditioner(time_embed_dim=512, latent_channels=64, feedback_dim=32)
    with pytest.raises(ValueError, match=r"reward_conditioner does not fit the UNet: .*time_embed_dim=512 and latent_channels=64.*128 and 32"):
        RewardConditionedPix2PixPipeline(**{**components, "reward_conditioner": wrong}, requires_safety_checker=False)


def test_callback_on_step_end_sees_and_can_replace_latents(trained):
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append((step, tensors["latents"].shape))
        return {"latents": tensors["latents"] * 0}

    zeroed = edit(trained, num_inference_steps=3, callback_on_step_end=callback)
    assert [step for step, _ in seen] == [0, 1, 2] and seen[0][1] == (1, 4, 16, 16)
    assert np.abs(zeroed - edit(trained, num_inference_steps=3)).max() > 1e-3


def _turn_classifier_free_guidance_off_at(step):
    """diffusers' way (its InstructPix2Pix ``test_callback_cfg``): from ``step`` on, keep the text
    branch (the first third) of the batched tensors and set the guidance scale to 1."""

    def callback(pipe, i, t, tensors):
        if i == step:
            tensors = {name: tensor.chunk(3)[0] if name in ("prompt_embeds", "image_latents") else tensor
                       for name, tensor in tensors.items()}
            pipe._guidance_scale = 1.0
        return tensors

    return callback


def test_callback_turning_classifier_free_guidance_off_mid_run_follows_diffusers(untrained, reference, trained):
    settings = {"num_inference_steps": 3, "guidance_scale": 7.5, "callback_on_step_end": _turn_classifier_free_guidance_off_at(0),
                "callback_on_step_end_tensor_inputs": ["latents", "prompt_embeds", "image_latents"]}
    ours = edit(untrained, **settings)
    theirs = edit(reference, **settings)
    assert ours.shape == (1, 32, 32, 3) and np.abs(ours - theirs).max() <= 1e-5
    assert np.abs(ours - edit(untrained, num_inference_steps=3, guidance_scale=7.5)).max() > 1e-4, "guidance did change"

    # a trained conditioner, with reward guidance: the branches shrink from 4 to 2 and the rewards follow
    sizes, drops = [], []
    original_forward = trained.reward_conditioner.forward

    def spy_forward(scores, feedback, drop=None):
        drops.append(drop.tolist())
        return original_forward(scores, feedback, drop)

    handle = trained.unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    trained.reward_conditioner.forward = spy_forward
    try:
        edit(trained, reward_guidance_scale=3.0, **settings)
    finally:
        handle.remove()
        del trained.reward_conditioner.forward
    assert sizes == [4, 2, 2]
    assert drops == [[False, False, False, True], [False, True]]


def test_callback_turning_reward_guidance_off_mid_run_drops_its_branch(trained):
    def reward_guidance_off(pipe, i, t, tensors):
        pipe._reward_guidance_scale = 1.0
        return tensors

    sizes = []
    handle = trained.unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        edit(trained, num_inference_steps=3, reward_guidance_scale=3.0, callback_on_step_end=reward_guidance_off)
    finally:
        handle.remove()
    assert sizes == [4, 3, 3]


def test_pipeline_without_text_encoder_takes_precomputed_prompt_and_feedback_embeds(trained):
    text, negative, _ = trained._encode_prompt(PROMPTS[0], "cpu", 1, True, None).chunk(3)
    no_text_encoder = RewardConditionedPix2PixPipeline(
        **{**trained.components, "text_encoder": None, "tokenizer": None}, requires_safety_checker=False
    )
    no_text_encoder.set_progress_bar_config(disable=True)
    embeds = {"prompt": None, "prompt_embeds": text, "negative_prompt_embeds": negative}

    with pytest.raises(ValueError, match=r"the pipeline has no text_encoder to encode the reward feedback.*`reward_feedback_embeds`"):
        edit(no_text_encoder, **embeds)

    conditioner = trained.reward_conditioner
    failure = {"generation_quality": "slight grain and noise across the image"}
    with torch.no_grad():
        default_embeds, failure_embeds = conditioner.encode_feedback(
            trained.tokenizer, trained.text_encoder, [conditioner.no_failure_feedback, conditioner.join_feedback(failure)]
        )
    default = edit(no_text_encoder, reward_feedback_embeds=default_embeds, **embeds)
    assert np.abs(default - edit(trained)).max() <= 1e-5
    with_failure = edit(no_text_encoder, reward_feedback_embeds=failure_embeds[None], rewards=[2, 5, 5], **embeds)
    assert np.abs(with_failure - edit(trained, reward_feedback=failure, rewards=[2, 5, 5])).max() <= 1e-5
    assert np.abs(with_failure - default).max() > 1e-3


def test_unet_lora_loads_beside_the_conditioner_and_keeps_its_own_file(tmp_path):
    from safetensors.torch import load_file

    source = tiny_reward_pix2pix_pipeline(perturb=0.2)
    lora_file = save_tiny_unet_lora(source.unet, tmp_path, weight_name="lora.safetensors")
    with_lora_in_place = edit(source, rewards=[2, 5, 5])
    keys = load_file(lora_file).keys()
    assert keys and all("lora" in key for key in keys) and not any("reward" in key for key in keys)

    pipe = tiny_reward_pix2pix_pipeline(perturb=0.2)
    before = edit(pipe, rewards=[2, 5, 5])
    pipe.load_lora_weights(tmp_path, weight_name="lora.safetensors")
    after = edit(pipe, rewards=[2, 5, 5])
    assert np.abs(after - before).max() > 1e-3
    assert np.abs(after - with_lora_in_place).max() <= 1e-5
    assert np.abs(edit(pipe, rewards=[5, 5, 5]) - after).max() > 1e-3, "rewards still steer with the LoRA loaded"
