"""StableDiffusion3InstructPix2PixPipeline on tiny random SD3 components: the untrained widened model is
the text-to-image model, masks are checked and converted, and UltraEdit's formulation (written out
here, independently of the pipeline) is what the pipeline computes."""

import numpy as np
import pytest
import torch
from PIL import Image

from editforge.pipelines import StableDiffusion3InstructPix2PixPipeline, widen_patch_embedding
from editforge.testing.tiny_models import (
    tiny_sd3_instruct_pix2pix_pipeline,
    tiny_sd3_pipeline,
    tiny_sd3_transformer,
)

PROMPT = "make the red circle blue"
IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))  # 48 wide, 32 high
MASK = Image.fromarray(np.where(np.arange(48)[None, :] < 24, 255, 0).repeat(32, 0).astype(np.uint8))  # left half


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def edit(pipe, **kwargs):
    inputs = dict(prompt=PROMPT, image=IMAGE, num_inference_steps=2, guidance_scale=5.0, image_guidance_scale=1.5,
                  output_type="np", generator=generator())
    inputs.update(kwargs)
    return pipe(**inputs).images


@pytest.fixture(scope="module")
def base():
    return tiny_sd3_pipeline()


def test_widen_patch_embedding_copies_old_weights_and_zeroes_new():
    transformer = tiny_sd3_transformer(in_channels=16, out_channels=16)
    old = transformer.pos_embed.proj.weight.detach().clone()
    widen_patch_embedding(transformer, 48)
    proj = transformer.pos_embed.proj
    assert proj.in_channels == 48 and transformer.config.in_channels == 48 and transformer.config.out_channels == 16
    assert torch.equal(proj.weight[:, :16], old) and not proj.weight[:, 16:].any()
    assert widen_patch_embedding(transformer, 48) is transformer
    with pytest.raises(ValueError, match="cannot be narrowed"):
        widen_patch_embedding(transformer, 32)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("normalization", ["scaled_shifted", "unscaled"])
@pytest.mark.parametrize("image_guidance_scale", [0.0, 1.0, 1.5, 4.0])
def test_untrained_widened_model_is_the_base_sd3_model(base, with_mask, normalization, image_guidance_scale):
    pipe = tiny_sd3_instruct_pix2pix_pipeline(with_mask=with_mask, image_latents_normalization=normalization)
    for guidance_scale in (1.0, 5.0):
        ours = edit(pipe, guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale, output_type="latent")
        theirs = base(PROMPT, height=32, width=48, num_inference_steps=2, guidance_scale=guidance_scale,
                      output_type="latent", generator=generator()).images
        assert ours.shape == (1, 16, 16, 24)
        assert (ours - theirs).abs().max().item() <= 1e-5
    if normalization == "scaled_shifted":  # SD3's own decode: the images are equal too
        ours = edit(pipe, image_guidance_scale=image_guidance_scale)
        theirs = base(PROMPT, height=32, width=48, num_inference_steps=2, guidance_scale=5.0, output_type="np",
                      generator=generator()).images
        assert np.abs(ours - theirs).max() <= 1e-5


def test_unscaled_decodes_without_shift_factor(base):
    pipe = tiny_sd3_instruct_pix2pix_pipeline(image_latents_normalization="unscaled")
    latents = base(PROMPT, height=32, width=48, num_inference_steps=2, guidance_scale=5.0, output_type="latent",
                   generator=generator()).images
    with torch.no_grad():
        decoded = base.vae.decode(latents / base.vae.config.scaling_factor).sample
    expected = base.image_processor.postprocess(decoded, output_type="np")
    assert np.abs(edit(pipe) - expected).max() <= 1e-5


def test_mask_none_is_an_all_white_mask():
    pipe = tiny_sd3_instruct_pix2pix_pipeline(with_mask=True, perturb=0.5)
    free_form = edit(pipe)
    assert np.array_equal(free_form, edit(pipe, mask_image=Image.new("RGB", IMAGE.size, (255, 255, 255))))
    assert np.array_equal(free_form, edit(pipe, mask_image=Image.new("L", IMAGE.size, 255)))
    assert np.array_equal(free_form, edit(pipe, mask_image=torch.ones(32, 48)))
    assert np.abs(free_form - edit(pipe, mask_image=MASK)).max() > 1e-3, "a trained mask channel changes the output"
    assert np.array_equal(edit(pipe, mask_image=MASK), edit(pipe, mask_img=MASK)), "UltraEdit's argument name"
    with pytest.raises(ValueError, match="not both"):
        edit(pipe, mask_image=MASK, mask_img=MASK)


def test_32_channel_model_refuses_a_mask():
    pipe = tiny_sd3_instruct_pix2pix_pipeline(with_mask=False)
    with pytest.raises(ValueError, match="takes 32 input channels .* it has no mask input"):
        edit(pipe, mask_image=MASK)


def test_mask_of_another_size_or_mode_is_converted():
    pipe = tiny_sd3_instruct_pix2pix_pipeline(with_mask=True, perturb=0.5)
    expected = edit(pipe, mask_image=MASK)
    small_rgba = MASK.resize((24, 16), resample=Image.NEAREST).convert("RGBA")
    assert np.array_equal(expected, edit(pipe, mask_image=small_rgba))
    assert np.array_equal(expected, edit(pipe, mask_image=MASK.convert("1")))
    as_array = np.asarray(MASK, dtype=np.float32) / 255
    assert np.array_equal(expected, edit(pipe, mask_image=as_array))
    assert np.array_equal(expected, edit(pipe, mask_image=torch.from_numpy(as_array)[None, None].repeat(1, 3, 1, 1)))
    assert np.array_equal(expected, edit(pipe, mask_image=torch.from_numpy(as_array[::2, ::2].copy())))


def test_bad_masks_and_images_are_refused_clearly():
    pipe = tiny_sd3_instruct_pix2pix_pipeline(with_mask=True)
    with pytest.raises(ValueError, match="values in 0..1"):
        edit(pipe, mask_image=torch.full((32, 48), 255.0))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        edit(pipe, mask_image=torch.ones(1, 2, 32, 48))
    with pytest.raises(TypeError, match="`mask_image` must be a PIL image"):
        edit(pipe, mask_image="mask.png")
    with pytest.raises(ValueError, match="`image` is required"):
        edit(pipe, image=None)
    odd = IMAGE.resize((47, 32))
    with pytest.raises(ValueError, match=r"47x32 .* multiples of 2 .* e.g. to 46x32"):
        edit(pipe, image=odd)
    assert edit(pipe, image=odd, height=32, width=46).shape == (1, 32, 46, 3)
    with pytest.raises(ValueError, match="image_latents_normalization must be one of"):
        StableDiffusion3InstructPix2PixPipeline(**pipe.components, image_latents_normalization="scaled")
    wrong = tiny_sd3_instruct_pix2pix_pipeline()
    widen_patch_embedding(wrong.transformer, 40)
    with pytest.raises(ValueError, match="takes 40 input channels; .* 32 .* or 48"):
        edit(wrong)


def test_any_aspect_ratio_batches_and_images_per_prompt():
    pipe = tiny_sd3_instruct_pix2pix_pipeline(with_mask=True, perturb=0.5)
    tall = IMAGE.transpose(Image.Transpose.TRANSPOSE)
    assert edit(pipe, image=tall, mask_image=MASK.transpose(Image.Transpose.TRANSPOSE)).shape == (1, 48, 32, 3)
    two = edit(pipe, prompt=[PROMPT, "make the square green"], image=[IMAGE, IMAGE.rotate(180)],
               num_images_per_prompt=2, generator=[generator(s) for s in range(4)])
    assert two.shape == (4, 32, 48, 3)
    # each image stays with its prompt: sample 2 is prompt 2's first image
    alone = edit(pipe, prompt="make the square green", image=IMAGE.rotate(180), generator=generator(2))
    assert np.abs(two[2] - alone[0]).max() <= 1e-5


def test_callback_on_step_end_sees_the_condition_latents_and_can_turn_guidance_off():
    pipe = tiny_sd3_instruct_pix2pix_pipeline(with_mask=True, perturb=0.5)
    seen = []

    def callback(p, step, t, tensors):
        seen.append({k: tuple(v.shape) for k, v in tensors.items()})
        p._guidance_scale = 1.0  # guidance off from the next step: only the text branch runs
        return tensors

    out = edit(pipe, num_inference_steps=3, callback_on_step_end=callback,
               callback_on_step_end_tensor_inputs=["latents", "image_latents", "mask_latents", "prompt_embeds"])
    assert seen[0]["image_latents"] == (3, 16, 16, 24) and seen[0]["mask_latents"] == (3, 16, 16, 24)
    assert np.isfinite(out).all() and len(seen) == 3


def _ultraedit_reference(pipe, image, mask, guidance_scale, image_guidance_scale, steps, seed):
    """UltraEdit's SD3 formulation, written out from its fork (pipeline_stable_diffusion_3_instructpix2pix.py):
    source and mask latents = VAE latent_dist.mode(), unscaled; branches [text+img, neg+img, neg+zero];
    decode latents / scaling_factor (shift_factor unused)."""
    vae, transformer, scheduler = pipe.vae, pipe.transformer, pipe.scheduler

    def to_pixels(img):
        array = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1)[None]

    with torch.no_grad():
        pe, ne, pp, npp = pipe.encode_prompt(PROMPT, None, None, negative_prompt="", do_classifier_free_guidance=True)
        embeds, pooled = torch.cat([pe, ne, ne]), torch.cat([pp, npp, npp])
        image_latents = vae.encode(to_pixels(image)).latent_dist.mode()
        mask_latents = vae.encode(to_pixels(mask)).latent_dist.mode()
        image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
        mask_latents = torch.cat([mask_latents, mask_latents, torch.zeros_like(mask_latents)])
        height, width = image.height // 2, image.width // 2
        latents = torch.randn((1, 16, height, width), generator=torch.Generator().manual_seed(seed))
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            model_input = torch.cat([torch.cat([latents] * 3), image_latents, mask_latents], dim=1)
            pred = transformer(hidden_states=model_input, timestep=t.expand(3), encoder_hidden_states=embeds,
                               pooled_projections=pooled, return_dict=False)[0]
            text, img, uncond = pred.chunk(3)
            pred = uncond + guidance_scale * (text - img) + image_guidance_scale * (img - uncond)
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
    return (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def test_pipeline_computes_ultraedits_formulation():
    pipe = tiny_sd3_instruct_pix2pix_pipeline(with_mask=True, perturb=0.5, image_latents_normalization="unscaled")
    ours = edit(pipe, mask_image=MASK, guidance_scale=7.5, image_guidance_scale=1.5, num_inference_steps=3)
    reference = _ultraedit_reference(pipe, IMAGE, MASK, 7.5, 1.5, 3, 0)
    assert np.abs(ours - reference).max() <= 1e-5
    scaled = tiny_sd3_instruct_pix2pix_pipeline(with_mask=True, perturb=0.5, image_latents_normalization="scaled_shifted")
    assert np.abs(edit(scaled, mask_image=MASK, guidance_scale=7.5, num_inference_steps=3) - reference).max() > 1e-3
