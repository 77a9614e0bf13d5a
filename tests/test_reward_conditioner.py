"""RewardConditioner: zero start, null reward, width checks, SD1.5/SDXL shapes, hooks that compose with LoRA."""

import pytest
import torch

from editforge.pipelines import PERSPECTIVES, RewardConditioner, encode_reward_feedback, join_reward_feedback
from editforge.testing.tiny_models import build_clip_tokenizer, tiny_clip_text_encoder, tiny_unet

# Real UNet configs (copied from the published config.json files; nothing is downloaded).
SD15_IP2P_UNET = {  # timbrooks/instruct-pix2pix
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SDXL_IP2P_UNET = {  # diffusers/sdxl-instructpix2pix-768
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816, "sample_size": 96, "time_embedding_type": "positional",
    "transformer_layers_per_block": [1, 2, 10], "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
# Added parameters, as reported in README.md (SD1.5: CLIP-L pooled 768; SDXL: OpenCLIP-bigG text_embeds 1280).
SD15_CONDITIONER_PARAMETERS = 5_028_416
SDXL_CONDITIONER_PARAMETERS = 5_848_128


def unet_inputs(batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 8, 16, 16, generator=generator),
        torch.tensor([500.0] * batch),
        torch.randn(batch, 77, 32, generator=generator),
    )


def perturbed(conditioner, seed=1, scale=0.2):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in conditioner.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return conditioner


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def test_untrained_conditioner_leaves_the_unet_output_unchanged_and_removes_its_hooks(unet):
    conditioner = RewardConditioner.from_unet(unet, feedback_dim=32)
    sample, t, text = unet_inputs(2)
    with torch.no_grad():
        base = unet(sample, t, text).sample
        with conditioner.conditioning(unet, torch.tensor([[5.0, 5, 5], [0, 1, 2]]), torch.randn(2, 32)):
            conditioned = unet(sample, t, text).sample
        after = unet(sample, t, text).sample
    assert torch.equal(conditioned, base)
    assert torch.equal(after, base)
    assert not unet.time_embedding._forward_hooks and not unet.conv_in._forward_hooks


def test_scores_feedback_and_the_null_reward_change_a_trained_conditioners_output(unet):
    conditioner = perturbed(RewardConditioner.from_unet(unet, feedback_dim=32))
    sample, t, text = unet_inputs(2)
    feedback = torch.randn(1, 32).expand(2, -1)

    def run(scores, feedback, drop=None):
        with torch.no_grad(), conditioner.conditioning(unet, scores, feedback, drop):
            return unet(sample, t, text).sample

    high = run(torch.tensor([[5.0, 5, 5]] * 2), feedback)
    low = run(torch.tensor([[5.0, 5, 5], [1, 5, 5]]), feedback)
    assert torch.equal(low[0], high[0]) and (low[1] - high[1]).abs().max() > 1e-3
    other_text = run(torch.tensor([[5.0, 5, 5]] * 2), torch.randn(2, 32))
    assert (other_text - high).abs().max() > 1e-3
    # the null reward ignores scores and feedback
    drop = torch.tensor([True, True])
    null_a = run(torch.tensor([[5.0, 5, 5]] * 2), feedback, drop)
    null_b = run(torch.tensor([[0.0, 2, 4]] * 2), torch.randn(2, 32), drop)
    assert torch.equal(null_a, null_b) and (null_a - high).abs().max() > 1e-3


def test_conditioner_gets_gradients_through_the_unet_and_composes_with_peft_lora(unet):
    from peft import LoraConfig

    lora_unet = tiny_unet()
    lora_unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv_in"]))
    conditioner = perturbed(RewardConditioner.from_unet(lora_unet, feedback_dim=32))
    sample, t, text = unet_inputs(2)
    drop = torch.tensor([False, True])
    with conditioner.conditioning(lora_unet, torch.tensor([[5.0, 4, 3], [2, 1, 0]]), torch.randn(2, 32), drop):
        loss = lora_unet(sample, t, text).sample.square().mean()
    loss.backward()
    for name in ("score_to_time.linear_2.weight", "feedback_to_time.weight", "proj_out.weight", "null_scores", "null_feedback"):
        assert dict(conditioner.named_parameters())[name].grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora_unet.named_parameters() if "lora" in n)


def test_zero_initialised_outputs_still_receive_gradients(unet):
    conditioner = RewardConditioner.from_unet(unet, feedback_dim=32)
    sample, t, text = unet_inputs(2)
    with conditioner.conditioning(unet, torch.tensor([[5.0, 4, 3], [2, 1, 0]]), torch.randn(2, 32)):
        unet(sample, t, text).sample.square().mean().backward()
    for layer in (conditioner.score_to_time.linear_2, conditioner.feedback_to_time, conditioner.proj_out):
        assert layer.weight.grad.abs().sum() > 0
    unet.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "config, feedback_dim, expected_parameters",
    [(SD15_IP2P_UNET, 768, SD15_CONDITIONER_PARAMETERS), (SDXL_IP2P_UNET, 1280, SDXL_CONDITIONER_PARAMETERS)],
    ids=["sd15", "sdxl"],
)
def test_real_unet_configs_on_the_meta_device(config, feedback_dim, expected_parameters):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        conditioner = RewardConditioner.from_unet(unet, feedback_dim=feedback_dim)
    assert (conditioner.config.time_embed_dim, conditioner.config.latent_channels) == (1280, 320)
    assert sum(p.numel() for p in conditioner.parameters()) == expected_parameters
    batch = 2
    kwargs = {}
    if config.get("addition_embed_type") == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, 1280, device="meta"),
                                       "time_ids": torch.empty(batch, 6, device="meta")}
    shapes = {}

    def record(name):
        def hook(module, args, output):
            shapes[name] = output.shape  # returns None: the output is left as it is
        return hook

    unet.time_embedding.register_forward_hook(record("time"))
    unet.conv_in.register_forward_hook(record("conv_in"))
    with conditioner.conditioning(unet, torch.empty(batch, 3, device="meta"), torch.empty(batch, feedback_dim, device="meta"),
                                  torch.zeros(batch, dtype=torch.bool, device="meta")):
        time_addition, tokens = conditioner(torch.empty(batch, 3, device="meta"), torch.empty(batch, feedback_dim, device="meta"))
        out = unet(torch.empty(batch, 8, 64, 64, device="meta"), torch.empty(batch, device="meta"),
                   encoder_hidden_states=torch.empty(batch, 77, config["cross_attention_dim"], device="meta"), **kwargs).sample
    assert time_addition.shape == shapes["time"] == (batch, 1280)
    assert tokens.shape == (batch, 2, 320) and shapes["conv_in"] == (batch, 320, 64, 64)
    assert out.shape == (batch, 4, 64, 64)


def test_width_mismatch_batch_mismatch_and_bad_scores_raise_clear_errors(unet):
    wrong = RewardConditioner(time_embed_dim=256, latent_channels=32, feedback_dim=32, norm_num_groups=16)
    scores, feedback = torch.full((2, 3), 5.0), torch.randn(2, 32)
    with pytest.raises(ValueError, match=r"does not fit the UNet: .*time_embed_dim=256.*the UNet has 128 and 32"):
        with wrong.conditioning(unet, scores, feedback):
            pass
    conditioner = RewardConditioner.from_unet(unet, feedback_dim=32)
    sample, t, text = unet_inputs(3)
    with pytest.raises(ValueError, match="set up for a UNet batch of 2, the UNet got 3"):
        with conditioner.conditioning(unet, scores, feedback):
            unet(sample, t, text)
    assert not unet.conv_in._forward_hooks, "hooks must be removed after an error"
    with pytest.raises(ValueError, match=r"must lie in 0..5"):
        with conditioner.conditioning(unet, torch.tensor([[5.0, 6, 5]] * 2), feedback):
            pass
    with pytest.raises(ValueError, match=r"expected scores \[B, 3\] and feedback_embeds \[B, 32\]"):
        conditioner(scores, torch.randn(2, 16))


def test_feedback_texts_are_joined_in_perspective_order_and_pooled():
    from editforge.dataset_builders.synthetic.rubric import PERSPECTIVES as RUBRIC_PERSPECTIVES

    assert PERSPECTIVES == RUBRIC_PERSPECTIVES
    assert join_reward_feedback(None) == "None; None; None"
    assert join_reward_feedback({"generation_quality": "blurry", "instruction_following": "not blue"}) == "not blue; None; blurry"
    with pytest.raises(ValueError, match="unknown reward perspective 'quality'"):
        join_reward_feedback({"quality": "blurry"})
    words = ["none", "blurry", "the", "circle", "is", "green"]
    tokenizer = build_clip_tokenizer(words)
    encoder = tiny_clip_text_encoder(len(tokenizer))
    with torch.no_grad():
        embeds = encode_reward_feedback(tokenizer, encoder, ["None; None; None", "the circle is green; None; blurry", "None; None; None"])
    assert embeds.shape == (3, 32)
    assert torch.equal(embeds[0], embeds[2]) and not torch.allclose(embeds[0], embeds[1])


def test_feedback_longer_than_the_prompt_length_is_not_cut():
    # a tokenizer whose prompt length (model_max_length) is short, as in the demo: feedback is
    # encoded up to the text encoder's positions and pools exactly as with a 77-token tokenizer
    words = ["the background is navy, not black; the circle at the top left is green, not pink; slight grain"]
    short, long = build_clip_tokenizer(words, model_max_length=8), build_clip_tokenizer(words, model_max_length=77)
    assert "navy</w>" in short.get_vocab() and "black</w>" in short.get_vocab()  # words next to punctuation
    encoder = tiny_clip_text_encoder(len(short))
    texts = [words[0], "None; None; None"]
    with torch.no_grad():
        from_short, from_long = (encode_reward_feedback(t, encoder, texts) for t in (short, long))
        cut = encode_reward_feedback(short, encoder, ["the background is navy"])  # a different text
    assert len(short(words[0]).input_ids) > 8
    torch.testing.assert_close(from_short, from_long, rtol=0, atol=1e-6)
    assert not torch.allclose(from_short[0], cut[0])
