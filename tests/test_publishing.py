"""Publishing by spec (editforge.publishing + editforge.hub.publish_pipeline): the plain InstructPix2Pix
baseline as a stock diffusers repo, a new spec defined here needing nothing else, sibling code files,
extra weight files, and the refusals."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from editforge.errors import UsageError
from editforge.hub import publish_pipeline
from editforge.publishing import (
    SPECS,
    ComponentCode,
    PublishSpec,
    detect_spec,
    get_spec,
    register_spec,
    reward_conditioner_summary,
    validate_spec,
)
from editforge.testing.fake_hub import add_repo, offline_hub
from editforge.testing.tiny_models import (
    save_tiny_unet_lora,
    tiny_instruct_pix2pix_components,
    tiny_instruct_pix2pix_pipeline,
    tiny_reward_pix2pix_pipeline,
    tiny_unet,
)

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
STOCK_LIBRARIES = {"diffusers", "transformers", None}


def edit(pipe, **extra):
    pipe.set_progress_bar_config(disable=True)
    return pipe("make the red circle blue", image=IMAGE, num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0), **extra).images


def reward_edit(pipe):
    return edit(pipe, rewards=[2, 4, 5], reward_feedback={"generation_quality": "blurry"})


def tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def private_modules_cache(tmp_path, monkeypatch):
    """Custom code is copied into a modules cache; keep ours away from other tests' copies."""
    import diffusers.utils.dynamic_modules_utils as dynamic_modules

    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(tmp_path / "modules"))


@pytest.fixture(scope="module")
def plain():
    pipe = tiny_instruct_pix2pix_pipeline()
    return {"pipe": pipe, "expected": edit(pipe)}


@pytest.fixture(scope="module")
def reward():
    pipe = tiny_reward_pix2pix_pipeline(perturb=0.2)
    return {"pipe": pipe, "expected": reward_edit(pipe)}


@pytest.fixture
def patch_embed(tmp_path):
    """A non-LoRA weight file, like the widened patch embedding an SD3 InstructPix2Pix ships."""
    path = tmp_path / "weights" / "patch_embed.safetensors"
    path.parent.mkdir()
    save_file({"pos_embed.proj.weight": torch.randn(8, 48, 2, 2), "pos_embed.proj.bias": torch.randn(8)}, path)
    return path


# --------------------------------------------------------------------------------------------------
# the plain InstructPix2Pix baseline: a stock diffusers repo


def test_plain_baseline_publishes_as_stock_diffusers_and_loads_without_trust(plain, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionInstructPix2PixPipeline

    out = publish_pipeline(plain["pipe"], tmp_path / "plain", "instruct_pix2pix", repo_id="org/plain",
                           base_model="org/base", datasets="org/edits", training={"max_train_steps": 10})
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    for name, entry in index.items():
        if isinstance(entry, list):
            assert entry[0] in STOCK_LIBRARIES, (name, entry)
    assert not list(out.rglob("*.py")), "a stock pipeline ships no code"
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "base_model: org/base" in card and "org/edits" in card
    assert 'StableDiffusionInstructPix2PixPipeline.from_pretrained("org/plain")' in card
    assert "trust_remote_code" not in card and "| max_train_steps | 10 |" in card
    assert "instruct-pix2pix" in card and "multi-reward" not in card and "load_lora_weights" not in card

    loaded = DiffusionPipeline.from_pretrained(out)  # no trust flag
    assert type(loaded) is StableDiffusionInstructPix2PixPipeline
    assert np.array_equal(edit(loaded), plain["expected"])
    cache = tmp_path / "cache"
    add_repo(cache, "org/plain", out)
    with offline_hub(cache):
        by_id = DiffusionPipeline.from_pretrained("org/plain")
    assert np.array_equal(edit(by_id), plain["expected"])


def test_plain_baseline_with_lora_and_extra_weights(plain, tmp_path, patch_embed):
    from diffusers import DiffusionPipeline

    lora = save_tiny_unet_lora(tiny_unet(), tmp_path / "lora")
    out = publish_pipeline(plain["pipe"], tmp_path / "plain-lora", "instruct_pix2pix", repo_id="org/plain-lora",
                           lora_weights=lora, extra_weights=[patch_embed])
    assert (out / lora.name).read_bytes() == lora.read_bytes()
    assert (out / patch_embed.name).read_bytes() == patch_embed.read_bytes(), "extra weights are copied as they are"
    card = (out / "README.md").read_text()
    assert 'pipe.load_lora_weights("org/plain-lora", weight_name="pytorch_lora_weights.safetensors")' in card
    assert "- **Other weights:** `patch_embed.safetensors`" in card
    assert "- **LoRA weights:** `pytorch_lora_weights.safetensors` (UNet" in card, "only LoRA files are listed as LoRA"
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionInstructPix2PixPipeline"

    loaded = DiffusionPipeline.from_pretrained(out)
    loaded.load_lora_weights(out, weight_name=lora.name)
    expected = tiny_instruct_pix2pix_pipeline()
    save_tiny_unet_lora(expected.unet, tmp_path / "again")  # the same seeded adapter in place
    assert np.array_equal(edit(loaded), edit(expected))
    assert not np.array_equal(edit(loaded), plain["expected"])

    # republishing the folder keeps the files and tells the LoRA and the other weights apart by their keys
    again = publish_pipeline(out, tmp_path / "republished", "instruct_pix2pix", repo_id="org/plain-lora")
    assert tree(again) == tree(out)


def test_plain_folder_is_published_by_naming_its_spec(plain, tmp_path):
    """Auto-detection takes a stock InstructPix2Pix folder for the reward pipeline it lacks a
    conditioner for, and says how to publish it as it is."""
    saved = tmp_path / "saved"
    plain["pipe"].save_pretrained(saved)
    for byproduct in ("checkpoint-10/model.safetensors", "logs/metrics.jsonl", "validation/step-10.png"):
        (saved / byproduct).parent.mkdir(parents=True, exist_ok=True)
        (saved / byproduct).write_bytes(b"x")
    (saved / "train_summary.json").write_text("{}")
    with pytest.raises(UsageError, match=r"has no reward_conditioner component .*pass spec='instruct_pix2pix'"):
        publish_pipeline(saved, tmp_path / "auto")
    with pytest.raises(UsageError, match=r"has no reward_conditioner component; .*pass spec='instruct_pix2pix'"):
        publish_pipeline(plain["pipe"], tmp_path / "auto")
    assert not (tmp_path / "auto").exists()

    out = publish_pipeline(saved, tmp_path / "named", spec="instruct_pix2pix")
    assert (out / "unet/diffusion_pytorch_model.safetensors").read_bytes() == (saved / "unet/diffusion_pytorch_model.safetensors").read_bytes()
    left_out = {"checkpoint-10", "logs", "validation", "train_summary.json"}
    assert not left_out & {p.name for p in out.iterdir()}, "training by-products are not part of the repo"


def test_cli_publishes_a_plain_folder_with_spec(plain, tmp_path, patch_embed):
    saved = tmp_path / "saved"
    plain["pipe"].save_pretrained(saved)
    out = tmp_path / "repo"
    done = subprocess.run([sys.executable, "-m", "editforge", "publish-pipeline", str(saved), str(out), "--spec",
                           "instruct_pix2pix", "--repo-id", "org/cli-plain", "--extra-weights", str(patch_embed)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "trust_remote_code" not in done.stdout and "DiffusionPipeline.from_pretrained(" in done.stdout
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    assert (out / patch_embed.name).is_file() and "`patch_embed.safetensors`" in (out / "README.md").read_text()


# --------------------------------------------------------------------------------------------------
# specs: detection, a new spec, validation


def test_registered_specs_detection_and_validation():
    assert {"reward_pix2pix", "instruct_pix2pix"} <= set(SPECS)
    for name in SPECS:
        validate_spec(get_spec(name))  # code files and card templates exist
    assert detect_spec("RewardConditionedPix2PixPipeline").name == "reward_pix2pix"
    assert detect_spec("StableDiffusionInstructPix2PixPipeline").name == "reward_pix2pix"  # its base class
    assert get_spec("instruct_pix2pix").pipeline_source is None and not get_spec("instruct_pix2pix").ships_code
    assert detect_spec("StableDiffusionPipeline").name == "diffusion_dpo"
    with pytest.raises(UsageError, match="no publishing spec for a FluxKontextPipeline pipeline; known specs: .*instruct_pix2pix"):
        detect_spec("FluxKontextPipeline")
    with pytest.raises(UsageError, match="unknown publishing spec 'sd9'; known: .*reward_pix2pix"):
        get_spec("sd9")


def test_a_new_spec_needs_nothing_else(reward, tmp_path, monkeypatch):
    """A spec defined here (the reward pipeline's files, another module name and tag) publishes and loads."""
    from diffusers import DiffusionPipeline

    spec = PublishSpec(
        name="reward_copy",
        pipeline_class="RewardConditionedPix2PixPipeline",
        pipeline_source="pipeline_reward_pix2pix.py",
        code_components={"reward_conditioner": ("reward_conditioner.py", "conditioner_code", "RewardConditioner")},
        template="reward_pix2pix",
        tags=("my-new-tag",),
        card_fields_from_folder=reward_conditioner_summary,
    )
    assert spec.code_components["reward_conditioner"] == ComponentCode("reward_conditioner.py", "conditioner_code", "RewardConditioner")
    out = publish_pipeline(reward["pipe"], tmp_path / "copy", spec, repo_id="org/copy")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "RewardConditionedPix2PixPipeline"]
    assert index["reward_conditioner"] == ["conditioner_code", "RewardConditioner"]
    assert (out / "reward_conditioner/conditioner_code.py").is_file() and not (out / "reward_conditioner/reward_module.py").exists()
    card = (out / "README.md").read_text()
    assert "- my-new-tag" in card and "- multi-reward" not in card
    parameters = sum(p.numel() for p in reward["pipe"].reward_conditioner.parameters())
    assert f"{parameters:,} parameters" in card
    loaded = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert type(loaded.reward_conditioner).__module__.endswith("conditioner_code")
    assert np.array_equal(reward_edit(loaded), reward["expected"])

    # registered, it is found by name; two specs for one class make auto-detection ask
    monkeypatch.setitem(SPECS, "reward_copy", spec)  # so that it is removed after the test
    del SPECS["reward_copy"]
    assert register_spec(spec) is spec
    assert get_spec("reward_copy") is spec
    with pytest.raises(UsageError, match="already registered"):
        register_spec(spec)
    with pytest.raises(UsageError, match="several publishing specs fit a RewardConditionedPix2PixPipeline: 'reward_pix2pix', 'reward_copy'"):
        publish_pipeline(reward["pipe"], tmp_path / "ambiguous")
    assert json.loads((publish_pipeline(reward["pipe"], tmp_path / "by-name", "reward_copy") / "model_index.json")
                      .read_text())["reward_conditioner"] == ["conditioner_code", "RewardConditioner"]


def test_code_that_imports_sibling_files_ships_them(plain, tmp_path, monkeypatch):
    """A pipeline file with `from .helpers import ...` (allowed by the layout rules) publishes with
    the sibling beside pipeline.py, and diffusers loads it."""
    from diffusers import DiffusionPipeline

    package = tmp_path / "src" / "toy_pipelines"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "toy_helpers.py").write_text("TOY_TAG = 'toy'\n")
    (package / "pipeline_toy.py").write_text(textwrap.dedent("""\
        from diffusers import StableDiffusionInstructPix2PixPipeline

        from .toy_helpers import TOY_TAG


        class ToyPix2PixPipeline(StableDiffusionInstructPix2PixPipeline):
            toy_tag = TOY_TAG
    """))
    (package / "pipeline_deep.py").write_text("from ..elsewhere import thing\n")
    (package / "pipeline_chain.py").write_text("from .pipeline_toy import ToyPix2PixPipeline\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    from toy_pipelines.pipeline_toy import ToyPix2PixPipeline

    spec = PublishSpec(name="toy_pix2pix", pipeline_class="ToyPix2PixPipeline", pipeline_source="pipeline_toy.py",
                       template="instruct_pix2pix", code_package="toy_pipelines")
    assert set(validate_spec(spec)) == {"pipeline.py", "toy_helpers.py"}
    pipe = ToyPix2PixPipeline(**tiny_instruct_pix2pix_components(), requires_safety_checker=False)
    out = publish_pipeline(pipe, tmp_path / "toy", spec)
    # diffusers resolves the sibling through the package diffusers_modules.local, which an earlier
    # test may have imported from its own modules cache (private_modules_cache): use this test's
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    for name in [n for n in sys.modules if n == "diffusers_modules" or n.startswith("diffusers_modules.")]:
        monkeypatch.delitem(sys.modules, name)
    assert (out / "toy_helpers.py").read_text() == "TOY_TAG = 'toy'\n"
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == ["pipeline", "ToyPix2PixPipeline"]
    loaded = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert type(loaded).__name__ == "ToyPix2PixPipeline" and type(loaded) is not ToyPix2PixPipeline
    assert loaded.toy_tag == "toy"
    assert np.array_equal(edit(loaded), plain["expected"])

    with pytest.raises(UsageError, match=r"imports from '\.\.elsewhere': published code may import only sibling files"):
        validate_spec(PublishSpec(name="deep", pipeline_class="X", pipeline_source="pipeline_deep.py",
                                  template="instruct_pix2pix", code_package="toy_pipelines"))
    with pytest.raises(UsageError, match="has relative imports of its own; diffusers copies only the entry file's direct imports"):
        validate_spec(PublishSpec(name="chain", pipeline_class="X", pipeline_source="pipeline_chain.py",
                                  template="instruct_pix2pix", code_package="toy_pipelines"))


def test_spec_validation_errors(reward, tmp_path):
    out = tmp_path / "out"
    no_template = PublishSpec(name="no_template", pipeline_class="RewardConditionedPix2PixPipeline",
                              pipeline_source="pipeline_reward_pix2pix.py", template="sd9_pix2pix")
    with pytest.raises(UsageError, match=r"publishing spec 'no_template': model card template 'sd9_pix2pix' not found \(.*sd9_pix2pix.md\); available: .*reward_pix2pix"):
        publish_pipeline(reward["pipe"], out, no_template)
    no_code = PublishSpec(name="no_code", pipeline_class="RewardConditionedPix2PixPipeline",
                          pipeline_source="pipeline_sd9.py", template="reward_pix2pix")
    with pytest.raises(UsageError, match="publishing spec 'no_code': pipeline_sd9.py is not a file of editforge.pipelines"):
        publish_pipeline(reward["pipe"], out, no_code)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out-")]

    with pytest.raises(UsageError, match="publishing spec name 'SD 9'"):
        PublishSpec(name="SD 9", pipeline_class="X", template="instruct_pix2pix")
    with pytest.raises(UsageError, match=r"a stock diffusers pipeline \(pipeline_source=None\) cannot carry component code"):
        PublishSpec(name="stock", pipeline_class="X", template="instruct_pix2pix",
                    code_components={"reward_conditioner": ("reward_conditioner.py", "reward_module", "RewardConditioner")})
    with pytest.raises(UsageError, match=r"code_components\['reward_conditioner'\] must be a ComponentCode"):
        PublishSpec(name="bad", pipeline_class="X", pipeline_source="pipeline_reward_pix2pix.py", template="instruct_pix2pix",
                    code_components={"reward_conditioner": "reward_conditioner.py"})
    with pytest.raises(UsageError, match="module 'pipeline' must be a module name other than 'pipeline'"):
        PublishSpec(name="bad", pipeline_class="X", pipeline_source="pipeline_reward_pix2pix.py", template="instruct_pix2pix",
                    code_components={"reward_conditioner": ("reward_conditioner.py", "pipeline", "RewardConditioner")})
    with pytest.raises(UsageError, match=r"template 'x.md' must be a template name"):
        PublishSpec(name="bad", pipeline_class="X", template="x.md")


def test_a_template_must_list_the_shipped_weights(plain, tmp_path, monkeypatch, patch_embed):
    from editforge.model_cards import render

    templates = tmp_path / "templates"
    shutil.copytree(render.TEMPLATES_DIR, templates)
    (templates / "forgetful.md").write_text("---\n{{ card_data }}\n---\n\n# A card that names no weight files\n")
    monkeypatch.setattr(render, "TEMPLATES_DIR", templates)
    spec = PublishSpec(name="forgetful", pipeline_class="StableDiffusionInstructPix2PixPipeline", template="forgetful")
    assert (publish_pipeline(plain["pipe"], tmp_path / "fine", spec) / "README.md").is_file()
    with pytest.raises(UsageError, match="model card template 'forgetful' does not list patch_embed.safetensors"):
        publish_pipeline(plain["pipe"], tmp_path / "out", spec, extra_weights=patch_embed)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# weight files and other refusals


def test_reward_pipeline_ships_extra_weights_beside_its_lora(reward, tmp_path, patch_embed):
    lora = save_tiny_unet_lora(tiny_unet(), tmp_path / "lora")
    out = publish_pipeline(reward["pipe"], tmp_path / "reward", repo_id="org/reward", lora_weights=[lora],
                           extra_weights=patch_embed)
    assert (out / patch_embed.name).read_bytes() == patch_embed.read_bytes()
    card = (out / "README.md").read_text()
    assert "- **Other weights:** `patch_embed.safetensors`" in card
    assert 'weight_name="pytorch_lora_weights.safetensors"' in card and 'weight_name="patch_embed.safetensors"' not in card
    again = publish_pipeline(out, tmp_path / "again", repo_id="org/reward")
    assert tree(again) == tree(out)


def test_weight_files_are_checked_before_anything_is_written(reward, plain, tmp_path, patch_embed):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=r"patch_embed.safetensors is not a LoRA file: key 'pos_embed.proj.(weight|bias)'"
                                         r" has no 'lora' in it .*extra_weights=\[...\] \(--extra-weights\)"):
        publish_pipeline(plain["pipe"], out, "instruct_pix2pix", lora_weights=patch_embed)
    pickled = tmp_path / "weights.bin"
    torch.save({"w": torch.zeros(1)}, pickled)
    with pytest.raises(UsageError, match="weights.bin is not a .safetensors file"):
        publish_pipeline(plain["pipe"], out, "instruct_pix2pix", extra_weights=[pickled])
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(UsageError, match="broken.safetensors is not a readable safetensors file"):
        publish_pipeline(plain["pipe"], out, "instruct_pix2pix", extra_weights=[broken])
    with pytest.raises(UsageError, match="weights file .*missing.safetensors not found"):
        publish_pipeline(plain["pipe"], out, "instruct_pix2pix", extra_weights=[tmp_path / "missing.safetensors"])
    twin = tmp_path / "twin" / patch_embed.name
    twin.parent.mkdir()
    shutil.copy2(patch_embed, twin)
    with pytest.raises(UsageError, match="would both be published as patch_embed.safetensors"):
        publish_pipeline(plain["pipe"], out, "instruct_pix2pix", extra_weights=[patch_embed, twin])
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out-")]


def test_wrong_spec_and_attached_adapters_are_refused(reward, tmp_path):
    with pytest.raises(UsageError, match="a RewardConditionedPix2PixPipeline cannot be published with spec 'instruct_pix2pix',"
                                         " which publishes StableDiffusionInstructPix2PixPipeline pipelines"):
        publish_pipeline(reward["pipe"], tmp_path / "out", "instruct_pix2pix")
    with_adapter = tiny_instruct_pix2pix_pipeline()
    save_tiny_unet_lora(with_adapter.unet, tmp_path / "lora")
    with pytest.raises(UsageError, match="the pipeline's unet carries LoRA adapters; publish the base pipeline"):
        publish_pipeline(with_adapter, tmp_path / "out", "instruct_pix2pix")
    with pytest.raises(UsageError, match=r"card_fields\['repo_id'\] is set by publish_pipeline"):
        publish_pipeline(reward["pipe"], tmp_path / "out", card_fields={"repo_id": "x"})
    assert not (tmp_path / "out").exists()


def test_publishing_modules_import_only_the_standard_library():
    code = ("import sys, editforge.hub, editforge.publishing, editforge.commands.publish_pipeline; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'safetensors', 'huggingface_hub', 'jinja2')"
            " if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
