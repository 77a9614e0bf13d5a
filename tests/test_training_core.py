"""The training core takes any trainer: a new loss, a weighted sampler, a denoiser of another family.

Each test writes its trainer here, in a few lines, on the shared core (config, Trainer, samplers,
objectives, LoRA) and checks checkpoints with exact resume.
"""

from dataclasses import dataclass

import pytest
import torch

from editforge.errors import UsageError
from editforge.training.config import FlowMatchingObjectiveConfig, TrainingConfig, help_field, parse_config
from editforge.training.core import Trainer
from editforge.training.samplers import ShapeBatchSampler, WeightedBatchSampler

COMMON = dict(pretrained_model_name_or_path="tiny", dataset_name="toy", train_batch_size=4, learning_rate=1e-2,
              checkpointing_steps=3, report_to="none", progress=False, logging_steps=1)


# ---- a test trainer: a Huber loss on a linear model, examples drawn by importance ------------------
@dataclass
class HuberConfig(TrainingConfig):
    delta: float = help_field("Huber threshold", default=0.5)


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)

    def save_pretrained(self, folder):
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder):
        from safetensors.torch import load_file

        model = cls()
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model


def train_huber(config: HuberConfig) -> dict:
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
    examples = [{"x": row, "y": row.sum(0, keepdim=True)} for row in x]
    trainer = Trainer(config, project_name="huber")
    trainer.checkpoint_modules({"linear": "linear"})
    model = torch.nn.Module()
    model.linear = Linear()
    weights = [0.0 if i % 4 == 0 else 1.0 + i for i in range(len(examples))]  # every 4th example never drawn
    sampler = WeightedBatchSampler(weights, config.train_batch_size, num_samples=16, seed=config.seed)
    collate = lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    trainer.prepare(model, examples, sampler, collate)

    def compute_loss(batch, generator):
        noise = 0.01 * torch.randn(batch["y"].shape, generator=generator)
        error = trainer.model.linear.layer(batch["x"]) - batch["y"] - noise
        loss = torch.nn.functional.huber_loss(error, torch.zeros_like(error), delta=config.delta)
        return loss, {"outside_delta": (error.abs() > config.delta).float().mean()}

    result = trainer.train(compute_loss)
    trainer.end()
    return {"losses": result.losses, "logs": result.logs, "weight": trainer.unwrap().linear.layer.weight.detach().clone()}
# ---- end of the test trainer (48 lines) ------------------------------------------------------------


def test_a_new_loss_and_a_weighted_sampler_train_with_exact_resume(tmp_path):
    straight = train_huber(HuberConfig(output_dir=str(tmp_path / "a"), max_train_steps=8, **COMMON))
    assert sorted(straight["losses"]) == list(range(1, 9))
    assert all(0.0 <= straight["logs"][s]["outside_delta"] <= 1.0 for s in range(1, 9))  # extra values logged
    assert straight["losses"][8] < straight["losses"][1]

    first = train_huber(HuberConfig(output_dir=str(tmp_path / "b"), max_train_steps=3, **COMMON))
    assert (tmp_path / "b" / "checkpoint-3" / "linear" / "model.safetensors").is_file()
    assert first["losses"] == {s: straight["losses"][s] for s in (1, 2, 3)}
    resumed = train_huber(HuberConfig(output_dir=str(tmp_path / "b"), max_train_steps=8,
                                      resume_from_checkpoint="latest", **COMMON))
    assert resumed["losses"] == {s: straight["losses"][s] for s in range(4, 9)}  # bit for bit
    assert torch.equal(resumed["weight"], straight["weight"])


def test_weighted_sampler_draws_by_weight_and_never_a_zero_weight():
    weights = [0.0, 1.0, 3.0, 0.0]
    sampler = WeightedBatchSampler(weights, batch_size=4, num_samples=4000, seed=0)
    drawn = torch.tensor([i for batch in sampler for i in batch])
    counts = torch.bincount(drawn, minlength=4).tolist()
    assert counts[0] == counts[3] == 0
    assert abs(counts[2] / counts[1] - 3.0) < 0.3
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first  # a function of (seed, epoch) only
    shaped = WeightedBatchSampler([1.0] * 8, batch_size=2, shapes=[(32, 32), (64, 32)] * 4, num_samples=64)
    assert all(len({i % 2 for i in batch}) == 1 for batch in shaped)  # one shape per batch


@pytest.mark.parametrize("weights, message", [
    ([1.0, float("nan")], "example 1: sampling weight nan"),
    ([1.0, -2.0], "example 1: sampling weight -2.0"),
    ([0.0, 0.0], "every sampling weight is 0"),
])
def test_weighted_sampler_rejects_bad_weights(weights, message):
    with pytest.raises(UsageError, match=message):
        WeightedBatchSampler(weights, batch_size=1)


def test_configs_validate_when_made_in_python_and_from_flags():
    with pytest.raises(UsageError, match="--learning_rate must be positive"):
        HuberConfig(**{**COMMON, "learning_rate": 0})
    with pytest.raises(UsageError, match="--dataset_name is required"):
        parse_config(HuberConfig, ["--pretrained_model_name_or_path", "x"])

    @dataclass
    class FlowConfig(FlowMatchingObjectiveConfig, TrainingConfig):
        pass

    assert parse_config(FlowConfig, ["--pretrained_model_name_or_path", "x", "--dataset_name", "d",
                                     "--weighting_scheme", "mode"]).weighting_scheme == "mode"
    with pytest.raises(UsageError, match="--weighting_scheme must be one of uniform, logit_normal, mode"):
        FlowConfig(**{**COMMON, "weighting_scheme": "nope"})


def test_the_trainer_refuses_a_sampler_without_epochs(tmp_path):
    trainer = Trainer(HuberConfig(output_dir=str(tmp_path), **COMMON), project_name="x")
    with pytest.raises(TypeError, match="has no set_epoch"):
        trainer.prepare(torch.nn.Linear(1, 1), [0, 1], [[0, 1]], list)
    assert ShapeBatchSampler([(8, 8)] * 4, 2).set_epoch(3) is None


# ---- a test trainer: text-to-image flow matching on a tiny SD3 transformer with LoRA --------------
@dataclass
class SD3Config(FlowMatchingObjectiveConfig, TrainingConfig):
    pass


def train_sd3_lora(config: SD3Config):
    from editforge.testing.tiny_models import tiny_sd3_pipeline
    from editforge.training.lora import add_lora
    from editforge.training.objectives import flow_matching_batch, weighted_mse

    pipe = tiny_sd3_pipeline(seed=0)
    prompts = ["a red circle", "a blue square", "two green triangles", "a yellow circle on grey"]
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, None, do_classifier_free_guidance=False)
    latents = torch.randn(len(prompts), 16, 4, 4, generator=torch.Generator().manual_seed(2))
    examples = [{"embeds": e, "pooled": p, "latents": x} for e, p, x in zip(embeds, pooled, latents)]
    add_lora(pipe.transformer, config.rank)
    model = torch.nn.Module()
    model.transformer = pipe.transformer
    trainer = Trainer(config, project_name="sd3-lora")
    trainer.checkpoint_modules({}, lora="transformer")
    sampler = ShapeBatchSampler([(4, 4)] * len(examples), config.train_batch_size, seed=config.seed)
    collate = lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    trainer.prepare(model, examples, sampler, collate)

    def compute_loss(batch, generator):
        step = flow_matching_batch(pipe.scheduler, batch["latents"], generator, config.weighting_scheme)
        prediction = trainer.model.transformer(hidden_states=step.noisy, timestep=step.timesteps,
                                               encoder_hidden_states=batch["embeds"],
                                               pooled_projections=batch["pooled"]).sample
        return weighted_mse(prediction, step.target, step.weighting).mean()

    result = trainer.train(compute_loss)
    trainer.end()
    return pipe, result.losses
# ---- end of the test trainer (35 lines) ------------------------------------------------------------


def test_sd3_flow_matching_lora_resumes_exactly_and_loads_with_load_lora_weights(tmp_path):
    from editforge.testing.tiny_models import tiny_sd3_pipeline
    from editforge.training.lora import LORA_WEIGHT_NAME, save_lora

    sd3 = dict(COMMON, train_batch_size=2, learning_rate=5e-2, rank=4, weighting_scheme="logit_normal")
    trained, straight = train_sd3_lora(SD3Config(output_dir=str(tmp_path / "a"), max_train_steps=6, **sd3))
    _, first = train_sd3_lora(SD3Config(output_dir=str(tmp_path / "b"), max_train_steps=3, **sd3))
    _, resumed = train_sd3_lora(SD3Config(output_dir=str(tmp_path / "b"), max_train_steps=6,
                                          resume_from_checkpoint="latest", **sd3))
    assert first == {s: straight[s] for s in (1, 2, 3)} and resumed == {s: straight[s] for s in (4, 5, 6)}

    save_lora(trained.transformer, tmp_path / "lora")
    fresh = tiny_sd3_pipeline(seed=0)
    fresh.load_lora_weights(tmp_path / "lora", weight_name=LORA_WEIGHT_NAME)
    call = dict(prompt="a red circle", num_inference_steps=2, height=32, width=32, guidance_scale=2.0, output_type="np")
    expected = trained(**call, generator=torch.Generator().manual_seed(0)).images
    loaded = fresh(**call, generator=torch.Generator().manual_seed(0)).images
    untrained = tiny_sd3_pipeline(seed=0)(**call, generator=torch.Generator().manual_seed(0)).images
    assert abs(expected - untrained).max() > 1e-3  # the LoRA changed the model
    assert abs(expected - loaded).max() == 0.0
