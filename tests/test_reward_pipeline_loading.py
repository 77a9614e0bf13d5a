"""The three loading routes of RewardConditionedPix2PixPipeline, by repo id from a fake Hub cache with
HF_HUB_OFFLINE=1, and save / publish round trips that reproduce outputs exactly."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from editforge.errors import UsageError
from editforge.hub import publish_pipeline
from editforge.pipelines import RewardConditionedPix2PixPipeline, RewardConditioner
from editforge.testing.fake_hub import add_repo, offline_hub
from editforge.testing.tiny_models import (
    save_tiny_unet_lora,
    tiny_instruct_pix2pix_pipeline,
    tiny_reward_pix2pix_pipeline,
    tiny_unet,
)

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def edit(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe("make the red circle blue", image=IMAGE, rewards=[2, 4, 5], reward_feedback={"generation_quality": "blurry"},
                num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(autouse=True)
def private_modules_cache(tmp_path, monkeypatch):
    """Custom code is copied into a modules cache; keep ours away from other tests' copies."""
    import diffusers.utils.dynamic_modules_utils as dynamic_modules

    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(tmp_path / "modules"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A published repo (org/reward-pix2pix), a plain InstructPix2Pix repo (org/plain-pix2pix) and the
    trained pipeline's outputs."""
    root = tmp_path_factory.mktemp("hub")
    pipe = tiny_reward_pix2pix_pipeline(perturb=0.2)
    published = publish_pipeline(pipe, root / "published", repo_id="org/reward-pix2pix",
                                 base_model="org/plain-pix2pix", datasets="org/reward-edits", training={"max_train_steps": 10})
    tiny_instruct_pix2pix_pipeline().save_pretrained(root / "plain")
    cache = root / "cache"
    add_repo(cache, "org/reward-pix2pix", published)
    add_repo(cache, "org/plain-pix2pix", root / "plain")
    return {"cache": cache, "published": published, "expected": edit(pipe), "pipe": pipe}


def test_published_repo_layout_and_model_index(hub):
    published = hub["published"]
    index = json.loads((published / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "RewardConditionedPix2PixPipeline"]
    assert index["reward_conditioner"] == ["reward_module", "RewardConditioner"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    for path in ("pipeline.py", "reward_conditioner/config.json", "reward_conditioner/diffusion_pytorch_model.safetensors",
                 "reward_conditioner/reward_module.py", "unet/diffusion_pytorch_model.safetensors", "README.md"):
        assert (published / path).is_file(), path
    assert not list(published.rglob("*.bin")) and not list(published.rglob("*.pt"))
    # the published code is self-contained: no relative imports for diffusers to chase
    for code in ("pipeline.py", "reward_conditioner/reward_module.py"):
        assert "from ." not in (published / code).read_text()
    card = (published / "README.md").read_text()
    assert card.startswith("---\n") and "base_model: org/plain-pix2pix" in card and "org/reward-edits" in card
    assert "library_name: diffusers" in card and "pipeline_tag: image-to-image" in card
    assert 'DiffusionPipeline.from_pretrained("org/reward-pix2pix", trust_remote_code=True)' in card
    assert "| max_train_steps | 10 |" in card
    parameters = sum(p.numel() for p in hub["pipe"].reward_conditioner.parameters())
    assert f"{parameters:,} parameters" in card


def test_route_1_published_repo_with_trust_remote_code(hub):
    from diffusers import DiffusionPipeline

    with offline_hub(hub["cache"]):
        with pytest.raises(ValueError, match="trust_remote_code"):
            DiffusionPipeline.from_pretrained("org/reward-pix2pix")
        pipe = DiffusionPipeline.from_pretrained("org/reward-pix2pix", trust_remote_code=True)
    assert type(pipe).__name__ == "RewardConditionedPix2PixPipeline"
    assert type(pipe) is not RewardConditionedPix2PixPipeline, "route 1 runs the repo's own pipeline.py"
    assert type(pipe.reward_conditioner).__module__.endswith("reward_module")
    assert np.array_equal(edit(pipe), hub["expected"])


def test_route_2_code_on_a_plain_instruct_pix2pix_repo(hub, monkeypatch):
    from diffusers import DiffusionPipeline
    from huggingface_hub import hf_hub_download

    with offline_hub(hub["cache"]):
        conditioner = RewardConditioner.from_pretrained("org/reward-pix2pix", subfolder="reward_conditioner")
        # the code as a local file from the code repo (works offline)
        code = hf_hub_download("org/reward-pix2pix", "pipeline.py")
        pipe = DiffusionPipeline.from_pretrained("org/plain-pix2pix", custom_pipeline=code, trust_remote_code=True,
                                                 reward_conditioner=conditioner)
        assert np.array_equal(edit(pipe), hub["expected"])
        # the code repo by id: diffusers 0.42 asks the Hub API for its commit even when the file is
        # cached, so answer that one call from the cache as the Hub would
        import diffusers.utils.dynamic_modules_utils as dynamic_modules

        commit = (hub["cache"] / "models--org--reward-pix2pix" / "refs" / "main").read_text()
        monkeypatch.setattr(dynamic_modules, "model_info", lambda repo_id, **kwargs: type("Info", (), {"sha": commit}))
        pipe = DiffusionPipeline.from_pretrained("org/plain-pix2pix", custom_pipeline="org/reward-pix2pix",
                                                 trust_remote_code=True, reward_conditioner=conditioner)
        assert type(pipe).__name__ == "RewardConditionedPix2PixPipeline"
        assert np.array_equal(edit(pipe), hub["expected"])


def test_route_3_installed_package_without_trust(hub):
    with offline_hub(hub["cache"]):
        pipe = RewardConditionedPix2PixPipeline.from_pretrained("org/reward-pix2pix")
        conditioner = RewardConditioner.from_pretrained("org/reward-pix2pix", subfolder="reward_conditioner")
        on_plain = RewardConditionedPix2PixPipeline.from_pretrained("org/plain-pix2pix", reward_conditioner=conditioner)
    assert type(pipe) is RewardConditionedPix2PixPipeline and type(pipe.reward_conditioner) is RewardConditioner
    assert pipe.config._name_or_path == "org/reward-pix2pix"
    assert np.array_equal(edit(pipe), hub["expected"])
    assert np.array_equal(edit(on_plain), hub["expected"])


def test_route_3_never_runs_the_repos_code(hub, tmp_path):
    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(hub["published"], tampered)
    for code in ("pipeline.py", "reward_conditioner/reward_module.py"):
        (tampered / code).write_text("raise RuntimeError('repo code was executed')\n")
    pipe = RewardConditionedPix2PixPipeline.from_pretrained(tampered)
    assert np.array_equal(edit(pipe), hub["expected"])


def test_published_lora_file_loads_by_repo_id_beside_the_conditioner(hub, tmp_path):
    from diffusers import DiffusionPipeline

    lora_file = save_tiny_unet_lora(tiny_unet(), tmp_path / "lora")
    published = publish_pipeline(hub["pipe"], tmp_path / "with-lora", repo_id="org/reward-lora", lora_weights=lora_file)
    assert (published / "pytorch_lora_weights.safetensors").read_bytes() == lora_file.read_bytes()
    assert 'pipe.load_lora_weights("org/reward-lora", weight_name="pytorch_lora_weights.safetensors")' in (published / "README.md").read_text()
    cache = tmp_path / "cache"
    add_repo(cache, "org/reward-lora", published)
    with offline_hub(cache):
        pipe = DiffusionPipeline.from_pretrained("org/reward-lora", trust_remote_code=True)
        pipe.load_lora_weights("org/reward-lora", weight_name="pytorch_lora_weights.safetensors")
    expected = tiny_reward_pix2pix_pipeline(perturb=0.2)  # the published pipeline, rebuilt
    save_tiny_unet_lora(expected.unet, tmp_path / "again")  # with the same seeded adapter in place
    assert np.array_equal(edit(pipe), edit(expected))
    assert not np.array_equal(edit(pipe), hub["expected"])


def test_save_pretrained_and_republish_round_trips(hub, tmp_path):
    from diffusers import DiffusionPipeline

    saved = tmp_path / "saved"
    hub["pipe"].save_pretrained(saved)
    index = json.loads((saved / "model_index.json").read_text())
    assert index["reward_conditioner"] == ["editforge.pipelines.reward_conditioner", "RewardConditioner"]
    assert np.array_equal(edit(RewardConditionedPix2PixPipeline.from_pretrained(saved)), hub["expected"])

    # a pipeline loaded from the repo's code saves module names that do not load again: publish instead
    remote = DiffusionPipeline.from_pretrained(hub["published"], trust_remote_code=True)
    republished = publish_pipeline(remote, tmp_path / "republished")
    assert np.array_equal(edit(DiffusionPipeline.from_pretrained(republished, trust_remote_code=True)), hub["expected"])
    # a folder publishes too (weights copied byte for byte; an existing card's metadata is kept)
    from_folder = publish_pipeline(saved, tmp_path / "from-folder")
    card = (publish_pipeline(hub["published"], tmp_path / "from-published") / "README.md").read_text()
    assert "base_model: org/plain-pix2pix" in card and "- org/reward-edits" in card
    assert (from_folder / "unet/diffusion_pytorch_model.safetensors").read_bytes() == (saved / "unet/diffusion_pytorch_model.safetensors").read_bytes()
    assert np.array_equal(edit(DiffusionPipeline.from_pretrained(from_folder, trust_remote_code=True)), hub["expected"])


def test_publish_refuses_bad_input_and_keeps_the_output_folder(hub, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not empty; choose an empty folder or pass overwrite"):
        publish_pipeline(hub["pipe"], out)
    with pytest.raises(UsageError, match="has no reward_conditioner component"):
        publish_pipeline(tiny_instruct_pix2pix_pipeline(), out, overwrite=True)
    plain = tmp_path / "plain"
    tiny_instruct_pix2pix_pipeline().save_pretrained(plain)
    with pytest.raises(UsageError, match=r"has no reward_conditioner component \(reward_conditioner/diffusion_pytorch_model.safetensors\)"):
        publish_pipeline(plain, out, overwrite=True)
    not_lora = tmp_path / "not-lora.safetensors"
    from safetensors.torch import save_file

    save_file({"reward_conditioner.proj_out.weight": torch.zeros(2)}, not_lora)
    with pytest.raises(UsageError, match="is not a LoRA file: key 'reward_conditioner.proj_out.weight'"):
        publish_pipeline(hub["pipe"], out, overwrite=True, lora_weights=not_lora)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not [p for p in tmp_path.iterdir() if p.name.startswith(".out-")]


def test_cli_publish_pipeline(hub, tmp_path):
    saved = tmp_path / "saved"
    hub["pipe"].save_pretrained(saved)
    out = tmp_path / "repo"
    done = subprocess.run([sys.executable, "-m", "editforge", "publish-pipeline", str(saved), str(out),
                           "--repo-id", "org/cli-repo", "--base-model", "org/plain-pix2pix"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "trust_remote_code=True" in done.stdout
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == ["pipeline", "RewardConditionedPix2PixPipeline"]
    assert 'from_pretrained("org/cli-repo"' in (out / "README.md").read_text()
    again = subprocess.run([sys.executable, "-m", "editforge", "publish-pipeline", str(saved), str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0 and "is not empty" in again.stderr
    missing = subprocess.run([sys.executable, "-m", "editforge", "publish-pipeline", str(tmp_path / "nope"), str(tmp_path / "x")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "nope is not a folder" in missing.stderr and "Traceback" not in missing.stderr


def test_model_card_renderer_names_its_templates():
    from editforge.model_cards import render_model_card, template_names

    assert "reward_pix2pix" in template_names()
    with pytest.raises(ValueError, match="unknown model card template 'nope'; available: .*reward_pix2pix"):
        render_model_card("nope")
