"""Offline fixtures: tiny pipelines run, save, and load back by repo id from a fake Hub cache."""

import numpy as np
import pytest
import torch
from PIL import Image

from editforge.testing.fake_hub import add_repo, offline_hub, repo_folder_name
from editforge.testing.tiny_models import (
    build_clip_tokenizer,
    synthetic_world_words,
    tiny_instruct_pix2pix_pipeline,
    tiny_sd3_components,
)


def test_tokenizer_makes_world_words_single_tokens_and_spells_the_rest():
    tokenizer = build_clip_tokenizer(synthetic_world_words())
    for word in ("circle", "triangle", "background", "purple", "negative", "vintage"):
        assert len(tokenizer.tokenize(word)) == 1, word
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]
    ids = tokenizer("make the red circle blue", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id


def test_tiny_instruct_pix2pix_runs_saves_and_loads_from_a_fake_hub_cache(tmp_path):
    from diffusers import DiffusionPipeline

    pipe = tiny_instruct_pix2pix_pipeline()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))

    def run(p):
        return p("make the red circle blue", image=image, num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images

    before = run(pipe)
    assert before.shape == (1, 32, 32, 3)
    pipe.save_pretrained(tmp_path / "saved")
    cache = tmp_path / "cache"
    snapshot = add_repo(cache, "editforge-test/tiny-ip2p", tmp_path / "saved")
    assert snapshot.parent.parent.name == repo_folder_name("editforge-test/tiny-ip2p")
    assert (snapshot.parent.parent / "refs" / "main").read_text() == snapshot.name
    with offline_hub(cache):
        loaded = DiffusionPipeline.from_pretrained("editforge-test/tiny-ip2p")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == "StableDiffusionInstructPix2PixPipeline"
    assert np.array_equal(run(loaded), before)


def test_offline_hub_refuses_unknown_repos_and_restores_settings(tmp_path):
    import huggingface_hub.constants as constants
    from diffusers import DiffusionPipeline

    cache_before = constants.HF_HUB_CACHE
    with offline_hub(tmp_path):
        assert constants.HF_HUB_OFFLINE is True
        with pytest.raises(Exception):
            DiffusionPipeline.from_pretrained("editforge-test/not-there")
    assert constants.HF_HUB_CACHE == cache_before


def test_tiny_sd3_set_runs():
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(**tiny_sd3_components())
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
