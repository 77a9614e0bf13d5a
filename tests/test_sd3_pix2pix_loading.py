"""The loading routes of StableDiffusion3InstructPix2PixPipeline, by repo id from a fake Hub cache with
HF_HUB_OFFLINE=1: (1) a repo laid out like UltraEdit's SD3 checkpoints with our code as custom_pipeline,
(2) a repo published by editforge with trust_remote_code, (3) the installed class, no trust flag."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import editforge.pipelines.pipeline_sd3_instruct_pix2pix as pipeline_module
from editforge.hub import publish_pipeline
from editforge.pipelines import StableDiffusion3InstructPix2PixPipeline
from editforge.testing.fake_hub import add_repo, offline_hub
from editforge.testing.tiny_models import tiny_sd3_instruct_pix2pix_pipeline

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
MASK = Image.fromarray(np.where(np.arange(48)[None, :] < 24, 255, 0).repeat(32, 0).astype(np.uint8))
CODE = Path(pipeline_module.__file__)


def same(a, b):
    """Equal to float rounding (1e-5): a model built in memory and the same weights loaded from files may
    run a few kernels differently (seen: ~1e-6)."""
    return a.shape == b.shape and np.abs(a - b).max() <= 1e-5


def edit(pipe, mask=MASK):
    pipe.set_progress_bar_config(disable=True)
    return pipe("make the red circle blue", image=IMAGE, mask_image=mask, num_inference_steps=2, guidance_scale=7.5,
                image_guidance_scale=1.5, output_type="np", generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(autouse=True)
def private_modules_cache(tmp_path, monkeypatch):
    """Custom code is copied into a modules cache; keep ours away from other tests' copies."""
    import diffusers.utils.dynamic_modules_utils as dynamic_modules

    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(tmp_path / "modules"))


def ultraedit_layout(pipe, folder: Path) -> Path:
    """``save_pretrained`` rewritten to UltraEdit's published layout (BleachNick/SD3_UltraEdit_w_mask): a
    model_index naming StableDiffusion3InstructPix2PixPipeline (their fork's class; stock diffusers has
    none) as a plain diffusers class, written by a 0.30 dev build, with no image encoder entries and no
    normalisation key. (Their repos carry a T5 encoder; these tiny weights have none.)"""
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    for key in ("image_encoder", "feature_extractor", "image_latents_normalization"):
        index.pop(key)
    index.update(_class_name="StableDiffusion3InstructPix2PixPipeline", _diffusers_version="0.30.0.dev0")
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    # a "trained" mask model: seeded noise on the widened channels
    ultra = tiny_sd3_instruct_pix2pix_pipeline(with_mask=True, perturb=0.5, image_latents_normalization="unscaled")
    ultraedit_layout(ultra, root / "ultraedit")
    ours = tiny_sd3_instruct_pix2pix_pipeline(with_mask=True, perturb=0.5, image_latents_normalization="scaled_shifted")
    published = publish_pipeline(ours, root / "published", spec="sd3_instruct_pix2pix", repo_id="org/sd3-pix2pix",
                                 training={"max_train_steps": 10})
    cache = root / "cache"
    add_repo(cache, "BleachNick/SD3_UltraEdit_w_mask", root / "ultraedit")
    add_repo(cache, "org/sd3-pix2pix", published)
    return {"cache": cache, "published": published, "ultra": edit(ultra), "ours": edit(ours),
            "ultra_free_form": edit(ultra, mask=None)}


def test_published_repo_layout(hub):
    published = hub["published"]
    index = json.loads((published / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "StableDiffusion3InstructPix2PixPipeline"]
    assert index["transformer"] == ["diffusers", "SD3Transformer2DModel"]
    assert index["image_latents_normalization"] == "scaled_shifted"
    assert (published / "pipeline.py").read_bytes() == CODE.read_bytes()
    assert "from ." not in (published / "pipeline.py").read_text()
    assert json.loads((published / "transformer/config.json").read_text())["in_channels"] == 48
    card = (published / "README.md").read_text()
    assert 'DiffusionPipeline.from_pretrained("org/sd3-pix2pix", trust_remote_code=True)' in card
    assert "48 input channels" in card and "mask_image=" in card and "`scaled_shifted`" in card
    assert "| max_train_steps | 10 |" in card


def test_route_1_ultraedit_layout_with_custom_pipeline(hub, monkeypatch):
    from diffusers import DiffusionPipeline
    from huggingface_hub import hf_hub_download

    with offline_hub(hub["cache"]):
        with pytest.raises(AttributeError, match="StableDiffusion3InstructPix2PixPipeline"):
            DiffusionPipeline.from_pretrained("BleachNick/SD3_UltraEdit_w_mask")  # stock diffusers lacks the class
        with pytest.raises(ValueError, match="trust_remote_code"):
            DiffusionPipeline.from_pretrained("BleachNick/SD3_UltraEdit_w_mask", custom_pipeline=str(CODE))
        # our file by path
        pipe = DiffusionPipeline.from_pretrained("BleachNick/SD3_UltraEdit_w_mask", custom_pipeline=str(CODE),
                                                 trust_remote_code=True)
        assert type(pipe).__name__ == "StableDiffusion3InstructPix2PixPipeline"
        assert type(pipe) is not StableDiffusion3InstructPix2PixPipeline, "route 1 runs the given code file"
        assert pipe.config.image_latents_normalization == "unscaled"
        assert same(edit(pipe), hub["ultra"])
        assert same(edit(pipe, mask=None), hub["ultra_free_form"])
        # the code of an editforge repo, as a file downloaded from it and by repo id
        code = hf_hub_download("org/sd3-pix2pix", "pipeline.py")
        pipe = DiffusionPipeline.from_pretrained("BleachNick/SD3_UltraEdit_w_mask", custom_pipeline=code,
                                                 trust_remote_code=True)
        assert same(edit(pipe), hub["ultra"])
        import diffusers.utils.dynamic_modules_utils as dynamic_modules

        # diffusers 0.42 asks the Hub API for the code repo's commit even when cached: answer from the cache
        commit = (hub["cache"] / "models--org--sd3-pix2pix" / "refs" / "main").read_text()
        monkeypatch.setattr(dynamic_modules, "model_info", lambda repo_id, **kwargs: type("Info", (), {"sha": commit}))
        pipe = DiffusionPipeline.from_pretrained("BleachNick/SD3_UltraEdit_w_mask", custom_pipeline="org/sd3-pix2pix",
                                                 trust_remote_code=True)
        assert same(edit(pipe), hub["ultra"])


def test_route_2_published_repo_with_trust_remote_code(hub):
    from diffusers import DiffusionPipeline

    with offline_hub(hub["cache"]):
        with pytest.raises(ValueError, match="trust_remote_code"):
            DiffusionPipeline.from_pretrained("org/sd3-pix2pix")
        pipe = DiffusionPipeline.from_pretrained("org/sd3-pix2pix", trust_remote_code=True)
    assert type(pipe).__name__ == "StableDiffusion3InstructPix2PixPipeline"
    assert type(pipe) is not StableDiffusion3InstructPix2PixPipeline
    assert pipe.config.image_latents_normalization == "scaled_shifted"
    assert same(edit(pipe), hub["ours"])


def test_route_3_installed_class_without_trust(hub):
    with offline_hub(hub["cache"]):
        published = StableDiffusion3InstructPix2PixPipeline.from_pretrained("org/sd3-pix2pix")
        ultra = StableDiffusion3InstructPix2PixPipeline.from_pretrained("BleachNick/SD3_UltraEdit_w_mask")
    assert type(published) is StableDiffusion3InstructPix2PixPipeline and type(ultra) is StableDiffusion3InstructPix2PixPipeline
    assert published.config._name_or_path == "org/sd3-pix2pix"
    assert same(edit(published), hub["ours"])
    assert same(edit(ultra), hub["ultra"])


def test_route_3_never_runs_the_repos_code(hub, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(hub["published"], tampered)
    (tampered / "pipeline.py").write_text("raise RuntimeError('repo code was executed')\n")
    assert same(edit(StableDiffusion3InstructPix2PixPipeline.from_pretrained(tampered)), hub["ours"])


def test_outputs_equal_across_routes_and_republish(hub, tmp_path):
    from diffusers import DiffusionPipeline

    remote = DiffusionPipeline.from_pretrained(hub["published"], trust_remote_code=True)
    republished = publish_pipeline(remote, tmp_path / "again", spec="sd3_instruct_pix2pix")
    again = DiffusionPipeline.from_pretrained(republished, trust_remote_code=True)
    assert same(edit(again), hub["ours"])
    # a folder publishes too, with its normalisation kept
    saved = tmp_path / "saved"
    StableDiffusion3InstructPix2PixPipeline.from_pretrained(hub["published"]).save_pretrained(saved)
    from_folder = publish_pipeline(saved, tmp_path / "from-folder")
    assert json.loads((from_folder / "model_index.json").read_text())["image_latents_normalization"] == "scaled_shifted"
    assert same(edit(StableDiffusion3InstructPix2PixPipeline.from_pretrained(from_folder)), hub["ours"])
