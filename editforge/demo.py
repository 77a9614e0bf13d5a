"""``editforge demo``: a miniature Multi-Reward reproduction that runs anywhere, offline.

1. synthetic editing triplets with controlled imperfections (the stand-in for InsPix2Pix data);
2. annotation by the built-in oracle judge, served on a loopback port and driven through the real
   ``openai`` client (the stand-in for GPT-4o; RewardEdit20K's three perspectives);
3. a Hub-ready dataset built from the annotations and reloaded with ``load_dataset``;
4. a tiny InstructPix2Pix base model: a small VAE fitted to the images, a random UNet and text
   encoder;
5. two models trained by ``training/train_reward_pix2pix.py`` on the same data, for the same steps,
   with the same seed: the plain InstructPix2Pix baseline and the reward-conditioned model;
6. both loaded back with ``DiffusionPipeline.from_pretrained`` and asked to edit held-out images
   (the reward-conditioned one at maximum reward, 5/5/5 and no failures), and their edits judged by
   the same oracle through the same client;
7. a report: ``report.md`` (the paper's table in miniature), ``grid.png`` (source, instruction,
   baseline, reward-conditioned) and ``results.json``.

The defaults take 8 to 12 minutes on a 2-core CPU (15 at most). Every stage shows progress.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from editforge.errors import EditforgeError
from editforge.training.config import help_field
from editforge.vocabulary import PERSPECTIVES


@dataclass
class DemoConfig:
    """Settings of ``editforge demo`` (each is a ``--flag``)."""

    out: str = help_field("output folder (a rerun with the same settings resumes there)", default="demo_output")
    seed: int = help_field("seed of the data (held-out data: seed + 1000) and of training", default=0)
    size: int = help_field("image side in pixels", default=32)
    train_items: int = help_field("training triplets", default=2000)
    eval_items: int = help_field("held-out edits to evaluate", default=100)
    imperfect: float = help_field("share of training triplets with a failure", default=0.8)
    instruction_failure_share: float = help_field("share of the failures that are in instruction following", default=0.8)
    tasks: str = help_field("edit kinds, comma-separated (editforge synth's tasks)", default="background_change,style_change")
    instruction_failures: str = help_field("instruction-following failure kinds, comma-separated (empty: all)",
                                      default="no_change")
    vae_steps: int = help_field("steps fitting the base model's VAE to the images", default=600)
    vae_channels: str = help_field("VAE block widths", default="32,64")
    train_steps: int = help_field("training steps of each model", default=1000)
    batch_size: int = help_field("training batch size", default=32)
    learning_rate: float = help_field("peak learning rate (cosine schedule)", default=1e-3)
    unet_channels: str = help_field("UNet block widths", default="32,64")
    text_width: int = help_field("text encoder width", default=32)
    eval_seeds: str = help_field("sampling seeds of the evaluation, comma-separated", default="0,1")
    inference_steps: int = help_field("denoising steps per edit", default=20)
    guidance_scale: float = help_field("text guidance of the edits", default=3.0)
    image_guidance_scale: float = help_field("image guidance of the edits", default=1.5)
    reward_guidance_scale: float = help_field("reward guidance of the extra 'guided' evaluation (1: skip it)", default=2.0)
    parallel_training: bool = help_field("train both models at once, one process each", default=True)
    grid_rows: int = help_field("held-out edits shown in grid.png", default=12)
    progress: bool = help_field("progress bars", default=True)

    @property
    def task_list(self) -> tuple[str, ...]:
        return tuple(t for t in self.tasks.split(",") if t)


def _stage(number: int, total: int, text: str) -> None:
    print(f"[{number}/{total}] {text}", flush=True)


_DATA_KEYS = ("seed", "size", "train_items", "eval_items", "imperfect", "instruction_failure_share", "tasks",
              "instruction_failures")
_BASE_KEYS = _DATA_KEYS + ("vae_steps", "vae_channels", "unet_channels", "text_width")
_TRAIN_KEYS = _BASE_KEYS + ("train_steps", "batch_size", "learning_rate")
STATE_FILE = "demo_state.json"
TOKENS = 16  # the tokenizer's prompt length: the world's instructions are at most 8 tokens


class _Stages:
    """Finished stages, kept in ``demo_state.json``: a rerun with the same settings skips them
    (an interrupted demo resumes where it stopped; changing, say, the training steps retrains
    without regenerating and re-annotating the data)."""

    def __init__(self, out: Path, config: DemoConfig):
        self.path, self.config = out / STATE_FILE, config
        self.state = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _key(self, keys) -> dict:
        return {k: getattr(self.config, k) for k in keys}

    def get(self, name: str, keys, outputs_exist=lambda result: True):
        """The saved result of stage ``name`` when it ran with the same settings and its outputs are
        still there; otherwise None."""
        saved = self.state.get(name)
        if saved is not None and saved["key"] == self._key(keys) and outputs_exist(saved["result"]):
            print(f"    ({name}: done before with the same settings: reusing it; delete {self.path.name} to redo)",
                  flush=True)
            return saved["result"]
        return None

    def put(self, name: str, keys, result) -> None:
        self.state[name] = {"key": self._key(keys), "result": result}
        self.path.write_text(json.dumps(self.state, indent=2) + "\n")

    def run(self, name: str, keys, function, outputs_exist=lambda result: True):
        result = self.get(name, keys, outputs_exist)
        if result is None:
            result = function()
            self.put(name, keys, result)
        return result


def run_demo(config: DemoConfig) -> dict:
    """Run the whole demo into ``config.out``; return the results (also in results.json)."""
    from editforge.commands.arguments import writable_dir

    out = writable_dir(config.out)
    stages = _Stages(out, config)
    timings: dict[str, float] = {}
    total = 7
    clock = time.perf_counter()

    def lap(name: str):
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    _stage(1, total, f"synthetic data: {config.train_items} training triplets, {config.eval_items} held-out edits")
    data = stages.run("data", _DATA_KEYS, lambda: _make_data(config, out),
                      lambda r: all(Path(p).is_file() for p in r.values()))
    train_manifest, heldout_manifest = Path(data["train"]), Path(data["heldout"])
    lap("data")

    _stage(2, total, "annotating with the built-in oracle judge through the openai client (loopback server)")
    annotation = stages.run("annotation", _DATA_KEYS, lambda: _annotate(config, out, train_manifest),
                            lambda r: Path(r["output"]).is_file())
    lap("annotation")

    _stage(3, total, "building the Hub dataset and reloading it with load_dataset")
    dataset_stats = stages.run("dataset", _DATA_KEYS, lambda: _build_dataset(config, out, Path(annotation["output"])),
                               lambda r: (Path(r["folder"]) / "README.md").is_file())
    dataset_dir = Path(dataset_stats["folder"])
    lap("dataset")

    _stage(4, total, "tiny InstructPix2Pix base model: fitting a VAE to the images")
    vae_info = stages.run("base_model", _BASE_KEYS, lambda: _make_base_model(config, out, dataset_dir),
                          lambda r: (Path(r["folder"]) / "model_index.json").is_file())
    base_dir = Path(vae_info["folder"])
    lap("base_model")

    _stage(5, total, f"training the baseline and the reward-conditioned model, {config.train_steps} steps each")
    training = {}
    for name in MODELS:
        training[name] = stages.get(name, _TRAIN_KEYS, lambda r: (Path(r["folder"]) / "model_index.json").is_file())
    pending = [name for name in MODELS if training[name] is None]
    for name, result in _train(config, out, base_dir, dataset_dir, pending).items():
        training[name] = result
        stages.put(name, _TRAIN_KEYS, result)
    lap("training")

    _stage(6, total, "editing held-out images with both models and judging the edits")
    evaluation = _evaluate(config, out, stages, base_dir, heldout_manifest)
    lap("evaluation")

    _stage(7, total, "writing the report")
    results = {
        "config": asdict(config),
        "timings_s": timings,
        "annotation": annotation,
        "dataset": dataset_stats,
        "vae": vae_info,
        "training": training,
        "scores": _scores(evaluation),
        "evaluation_folder": str(out / EVAL_FOLDER),
        "pipeline_folder": str(out / "reward"),
    }
    _write_report(config, out, results, evaluation)
    timings["report"] = round(time.perf_counter() - clock, 1)
    timings["total"] = round(sum(v for k, v in timings.items() if k != "total"), 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print((out / "report.md").read_text())
    return results


def _make_data(config: DemoConfig, out: Path) -> dict:
    from editforge.dataset_builders.synthetic import write_synthetic_dataset

    share = config.instruction_failure_share
    weights = {"instruction_following": share, "detail_preserving": (1 - share) / 2,
               "generation_quality": (1 - share) / 2}
    common = dict(width=config.size, height=config.size, progress=config.progress, tasks=config.task_list)
    kinds = tuple(k for k in config.instruction_failures.split(",") if k) or None
    train = write_synthetic_dataset(out / "data" / "train", n=config.train_items, seed=config.seed,
                                    imperfect_rate=config.imperfect, failure_weights=weights,
                                    instruction_failure_kinds=kinds, **common)
    heldout = write_synthetic_dataset(out / "data" / "heldout", n=config.eval_items, seed=config.seed + 1_000,
                                      imperfect_rate=0.0, **common)
    return {"train": str(train), "heldout": str(heldout)}


def _annotate(config: DemoConfig, out: Path, manifest: Path) -> dict:
    from editforge.dataset_builders.annotation import annotate_manifest
    from editforge.dataset_builders.manifest import read_manifest

    annotated = out / "data" / "train_annotated.jsonl"
    report = annotate_manifest(manifest, annotated, judge="oracle", cache=out / "cache" / "annotations.sqlite",
                               concurrency=8, allow_missing=True, progress=config.progress)
    agree = {p: 0 for p in PERSPECTIVES}
    judged = 0
    following_ok = 0
    for record in read_manifest(annotated):
        if record.get("rewards") is None:
            continue
        judged += 1
        following_ok += record["rewards"]["instruction_following"]["score"] == 5
        for p in PERSPECTIVES:
            agree[p] += record["rewards"][p]["score"] == record["ground_truth"][p]["score"]
    return {
        "output": str(annotated),
        "items": report.total,
        "judged": judged,
        "missing": report.failed,
        "seconds": round(report.elapsed, 1),
        "agreement_with_ground_truth": {p: round(agree[p] / max(1, judged), 4) for p in PERSPECTIVES},
        "share_following_5": round(following_ok / max(1, judged), 4),
    }


def _build_dataset(config: DemoConfig, out: Path, annotated: Path) -> dict:
    from datasets import load_dataset

    from editforge.dataset_builders import build_dataset

    folder = out / "dataset"
    report = build_dataset("manifest", annotated, folder, config="default", split="train",
                           progress=config.progress, on_error="fail")
    dataset = load_dataset(str(folder), "default", split="train")
    with_rewards = sum(r is not None for r in dataset["rewards"])
    return {"folder": str(folder), "examples": len(dataset), "with_rewards": with_rewards,
            "skipped": len(report.skipped)}


def dataset_pixels(dataset, columns=("source_image", "edited_image")):
    """Every image of ``columns`` of a dataset's rows (None cells skipped) as one [N, 3, H, W] tensor in [-1, 1]."""
    import numpy as np
    import torch

    images = []
    for row in dataset.select_columns(list(columns)):
        for key in columns:
            if row[key] is not None:
                images.append(np.asarray(row[key].convert("RGB"), dtype=np.float32))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0


def fit_vae(config, pixels, latent_channels: int = 4):
    """A tiny VAE (``config.vae_channels``) fitted to ``pixels`` for ``config.vae_steps`` steps on random crops
    of up to 16 px, seeded by ``config.seed``: ``(vae, losses)`` (shared by the demos)."""
    from editforge.training.autoencoder import tiny_autoencoder, train_autoencoder

    vae_channels = tuple(int(c) for c in config.vae_channels.split(","))
    vae = tiny_autoencoder(vae_channels, latent_channels=latent_channels, seed=config.seed)
    losses = train_autoencoder(vae, pixels, steps=config.vae_steps, crop=min(16, config.size),
                               seed=config.seed, progress=config.progress)
    return vae, losses


def _make_base_model(config: DemoConfig, out: Path, dataset_dir: Path) -> dict:
    import torch
    from datasets import load_dataset
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

    from editforge.testing.tiny_models import build_clip_tokenizer, synthetic_world_words, tiny_clip_text_encoder

    dataset = load_dataset(str(dataset_dir), "default", split="train")
    vae_channels = tuple(int(c) for c in config.vae_channels.split(","))
    vae, losses = fit_vae(config, dataset_pixels(dataset))

    # The vocabulary: the world's words plus every word of the data's instructions and judge feedback
    # (so a failure text is a few word tokens, not letters).
    texts = list(dataset["instruction"])
    texts += [r[p]["feedback"] for r in dataset["rewards"] if r is not None for p in PERSPECTIVES]
    tokenizer = build_clip_tokenizer(synthetic_world_words() + texts, model_max_length=TOKENS)
    text_encoder = tiny_clip_text_encoder(len(tokenizer), hidden_size=config.text_width, seed=config.seed)
    channels = tuple(int(c) for c in config.unet_channels.split(","))
    torch.manual_seed(config.seed)
    unet = UNet2DConditionModel(
        block_out_channels=channels,
        layers_per_block=1,
        sample_size=config.size // 2 ** (len(vae_channels) - 1),
        in_channels=8,
        out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
        cross_attention_dim=config.text_width,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="v_prediction",
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    folder = out / "base"
    pipe.save_pretrained(folder)
    tail = losses[-50:]
    return {"folder": str(folder), "steps": config.vae_steps, "final_mse": round(sum(tail) / len(tail), 5),
                    "scaling_factor": round(vae.config.scaling_factor, 4),
                    "unet_parameters": sum(p.numel() for p in unet.parameters()),
                    "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters())}


MODELS = {"baseline": False, "reward": True}  # name -> trained with rewards


def _train_arguments(config: DemoConfig, out: Path, base_dir: Path, dataset_dir: Path, name: str,
                     rewards: bool | None = None) -> list[str]:
    """The training script's flags for model ``name`` (output folder ``out / name``); ``rewards``:
    reward-conditioned or the plain baseline (default: as :data:`MODELS` says for ``name``)."""
    argv = [
        "--pretrained_model_name_or_path", str(base_dir),
        "--dataset_name", str(dataset_dir),
        "--output_dir", str(out / name),
        "--resolution", str(config.size),
        "--train_batch_size", str(config.batch_size),
        "--max_train_steps", str(config.train_steps),
        "--learning_rate", str(config.learning_rate),
        "--lr_scheduler", "cosine",
        "--lr_warmup_steps", str(min(100, config.train_steps // 10)),
        "--seed", str(config.seed),
        "--full", "--train_text_encoder", "--cache_latents",
        "--checkpointing_steps", "0",
        "--num_validation_images", "0",
        "--score_embed_dim", "64",
        "--no-progress", "--logging_steps", "1",
    ]
    if not (MODELS[name] if rewards is None else rewards):
        argv.append("--without_rewards")
    return argv


def _train(config: DemoConfig, out: Path, base_dir: Path, dataset_dir: Path, names: list[str]) -> dict:
    """Train the named models with ``training/train_reward_pix2pix.py``, each in its own process
    (:func:`train_in_processes`)."""
    return train_in_processes(config, out, "editforge.training.train_reward_pix2pix",
                              {name: _train_arguments(config, out, base_dir, dataset_dir, name) for name in names})


def train_in_processes(config, out: Path, module: str, arguments: dict[str, list[str]]) -> dict:
    """Run the training script ``module`` once per model (``arguments``: name -> its flags, the output
    folder ``out / name``), each in its own process; return each model's summary (shared by the demos).

    With two or more CPU cores (and ``config.parallel_training``) all run at once, the cores split
    between them: tiny models keep one core busy far better than two, so this is about 1.4x faster
    than one after the other. The progress bar follows the steps all have logged
    (``logs/metrics.jsonl``); ``config.train_steps`` is each model's total.
    """
    import os
    import subprocess
    import sys

    from tqdm.auto import tqdm

    from editforge.training.core import read_metrics

    names = list(arguments)
    if not names:
        return {}
    cpus = os.cpu_count() or 1
    groups = [names] if config.parallel_training and cpus >= 2 else [[name] for name in names]
    # a smaller OMP_NUM_THREADS set by the user caps each process's share (a machine shared with other jobs)
    cap = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else cpus
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    results = {}
    for group in groups:
        threads = str(max(1, min(cap, cpus // len(group))))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        processes = {}
        for name in group:
            if (out / name).exists():
                shutil.rmtree(out / name)
            log = open(logs / f"train_{name}.log", "w")
            command = [sys.executable, "-m", module, *arguments[name]]
            processes[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        bar = tqdm(total=config.train_steps * len(group), desc=f"train {' + '.join(group)}", unit="step",
                   disable=not config.progress)
        try:
            while True:
                codes = {name: process.poll() for name, (process, _) in processes.items()}
                steps = sum(max(read_metrics(out / name), default=0) for name in group)
                bar.update(steps - bar.n)
                failed = [name for name, code in codes.items() if code not in (None, 0)]
                if failed:
                    name = failed[0]
                    tail = (logs / f"train_{name}.log").read_text(errors="replace").splitlines()[-15:]
                    raise EditforgeError(f"training the {name} model failed (exit {codes[name]}); the end of "
                                    f"{logs / f'train_{name}.log'}:\n" + "\n".join(tail))
                if all(code == 0 for code in codes.values()):
                    break
                time.sleep(1.0)
        finally:
            bar.close()
            for process, log in processes.values():
                if process.poll() is None:
                    process.terminate()
                    process.wait()
                log.close()
        for name in group:
            summary = json.loads((out / name / "train_summary.json").read_text())
            losses = {step: values["loss"] for step, values in read_metrics(out / name).items() if "loss" in values}
            last = [losses[step] for step in sorted(losses)[-50:]]
            results[name] = {"steps": summary["global_step"], "seconds": round(summary["seconds"], 1),
                             "samples_per_second": round(summary["samples_per_second"], 1),
                             "final_loss": round(sum(last) / len(last), 5), "folder": str(out / name),
                             "threads": int(threads)}
    return results


EVAL_FOLDER = "eval"
CEILING_FOLDER = "vae_ceiling"  # the ideal edits through the VAE, one PNG per held-out item
# The held-out evaluation runs again when the models or how they are asked change.
_EVAL_KEYS = _TRAIN_KEYS + ("eval_seeds", "inference_steps", "guidance_scale", "image_guidance_scale",
                            "reward_guidance_scale")
# model name in the harness -> label in the report
LABELS = {"baseline": "InstructPix2Pix baseline", "reward": "reward-conditioned (rewards 5/5/5)",
          "reward_guided": "reward-conditioned + reward guidance {g:g} (ours)",
          "vae_ceiling": "ceiling: ideal edits through the VAE"}


def _evaluate(config: DemoConfig, out: Path, stages: _Stages, base_dir: Path, heldout_manifest: Path):
    """Both models (and the guided variant, and the VAE ceiling as edits made elsewhere) on the
    held-out edits through ``editforge eval``'s harness, judged by the oracle; resumable."""
    from editforge.evaluation import ModelSpec, evaluate

    folder = out / EVAL_FOLDER
    if stages.get("evaluation", _EVAL_KEYS) is None and folder.exists():
        shutil.rmtree(folder)  # run with other models or settings: its edits and answers are not these
    stages.put("evaluation", _EVAL_KEYS, {"folder": str(folder)})
    ceiling = _vae_ceiling(out, base_dir, heldout_manifest)
    asked = {"num_inference_steps": config.inference_steps, "guidance_scale": config.guidance_scale,
             "image_guidance_scale": config.image_guidance_scale}
    at_max_reward = {**asked, "rewards": [5.0, 5.0, 5.0], "reward_feedback": None}
    models = [ModelSpec("baseline", str(out / "baseline"), asked), ModelSpec("reward", str(out / "reward"), at_max_reward)]
    if config.reward_guidance_scale > 1:
        models.append(ModelSpec("reward_guided", str(out / "reward"),
                                {**at_max_reward, "reward_guidance_scale": config.reward_guidance_scale}))
    models.append(ModelSpec("vae_ceiling", f"outputs:{ceiling}"))
    return evaluate(models, str(heldout_manifest), folder, judge="oracle", seeds=config.eval_seeds, batch_size=25,
                    progress=config.progress, grid_rows=config.grid_rows, trust_remote_code=True)


def _vae_ceiling(out: Path, base_dir: Path, heldout_manifest: Path) -> Path:
    """The ideal edits passed through the VAE (what the best model on it can give), written once."""
    import numpy as np
    from diffusers import AutoencoderKL
    from PIL import Image

    from editforge.dataset_builders.annotation.sources import file_stem
    from editforge.dataset_builders.manifest import read_manifest

    folder = out / CEILING_FOLDER
    records = list(read_manifest(heldout_manifest))
    todo = [r for r in records if not (folder / f"{file_stem(r['id'])}.png").is_file()]
    if not todo:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(base_dir / "vae").eval()
    for record in todo:
        ideal = np.asarray(Image.open(heldout_manifest.parent / record["ideal_image"]).convert("RGB"))
        write_image(folder / f"{file_stem(record['id'])}.png", through_vae(vae, ideal))
    return folder


def through_vae(vae, image):
    """An HxWx3 uint8 image encoded (the latent distribution's mode) and decoded by ``vae``: what the best
    model on that VAE can give (shared by the demos' ceilings)."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample[0]
    return ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def write_image(path: Path, array) -> None:
    """An HxWx3 uint8 array as the PNG ``path``, written atomically."""
    from PIL import Image

    partial = path.with_name(path.name + ".partial")
    Image.fromarray(array).save(partial, format="PNG")
    partial.replace(path)


def item_rows(folder: Path) -> list[dict]:
    """The judged rows (``items.jsonl``) of an ``editforge eval`` run folder, one per (model, item, seed)."""
    return [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines() if line.strip()]


class StageClock:
    """Wall-clock and CPU seconds (all processes, :func:`cpu_seconds`) of each stage of a demo:
    ``lap(name)`` ends the stage ``name``; ``total()`` adds the ``total`` of each (shared by the demos)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), cpu_seconds()

    def lap(self, name: str) -> None:
        now, cpu_now = time.perf_counter(), cpu_seconds()
        self.wall[name], self.cpu[name] = round(now - self._wall, 1), round(cpu_now - self._cpu, 1)
        self._wall, self._cpu = now, cpu_now

    def total(self) -> None:
        for times in (self.wall, self.cpu):
            times["total"] = round(sum(v for k, v in times.items() if k != "total"), 1)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the training processes), all cores."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _scores(evaluation) -> dict:
    """results.json's ``scores``: each model's figures over all held-out edits, and per task."""
    scores = {}
    for name, model in evaluation.models.items():
        groups = model["subsets"]["all"]
        overall = groups["all"]
        scores[name] = {"items": overall["items"], "rows": overall["rows"], "judged": overall["judged"],
                        "missing": overall["missing"],
                        **{figure: values["value"] for figure, values in overall["figures"].items()},
                        "per_seed_following_accuracy": overall["figures"]["following_accuracy"]["per_seed"],
                        "following_accuracy_ci95": overall["figures"]["following_accuracy"]["ci95"],
                        "per_task_following_accuracy": {task: g["figures"]["following_accuracy"]["value"]
                                                        for task, g in groups.items() if task != "all"}}
    return scores


def _write_report(config, out: Path, results: dict, evaluation) -> None:
    scores = results["scores"]
    baseline, reward = scores["baseline"], scores["reward"]
    annotation, training = results["annotation"], results["training"]

    def percent(value):
        return "-" if value is None else f"{100 * value:.1f}"

    def row(name):
        s = scores[name]
        per_seed = ", ".join(percent(v) for v in s["per_seed_following_accuracy"].values())
        ci = s["following_accuracy_ci95"]
        interval = f" [{percent(ci[0])}, {percent(ci[1])}]" if ci else ""

        def mean(figure):
            return "-" if s[figure] is None else f"{s[figure]:.2f}"

        return (f"| {LABELS[name].format(g=config.reward_guidance_scale)} | **{percent(s['following_accuracy'])}%**"
                f"{interval} ({per_seed}) | {mean('mean_instruction_following')} | {mean('mean_detail_preserving')} | "
                f"{mean('mean_generation_quality')} | {percent(s['not_edited'])}% | {mean('dp_when_following')} | "
                f"{s['judged']}/{s['rows']} |")

    table = "\n".join(row(name) for name in scores)
    tasks = [g for g in evaluation.groups if g in baseline["per_task_following_accuracy"]
             or g in reward["per_task_following_accuracy"]]
    task_rows = "\n".join(
        f"| {t} | {percent(baseline['per_task_following_accuracy'].get(t))}% | "
        f"{percent(reward['per_task_following_accuracy'].get(t))}% |" for t in tasks
    )
    gain = 100 * ((reward["following_accuracy"] or 0) - (baseline["following_accuracy"] or 0))
    verdict = (f"Reward conditioning **raises** instruction-following accuracy by {gain:.1f} points."
               if gain > 0 else f"Reward conditioning does **not** beat the baseline here ({gain:+.1f} points).")
    text = f"""# editforge demo: Multi-Reward as Condition, in miniature

{verdict} Paper (InsPix2Pix, GPT-4o judge, Real-Edit): 47.7% -> 57.1%.

| model | following accuracy (IF = 5) [95% interval] (per eval seed) | mean IF | mean DP | mean GQ | not edited (IF = 0) | DP when IF = 5 | judged |
|---|---|---|---|---|---|---|---|
{table}

Scores are the oracle judge's (0..5: instruction following IF, detail preserving DP, generation
quality GQ), asked through the openai client exactly as GPT-4o would be, by `editforge eval`'s
harness (its run is in `{EVAL_FOLDER}/`: every edit, every answer in `items.jsonl`, its own
`report.md`). Following accuracy is the share of edits that score IF = 5; the interval is a
bootstrap over held-out items. Both models: same data, same base model, same seed, same
{training["baseline"]["steps"]} steps; the reward-conditioned one edits at the maximum reward, as in
the paper (no guidance over the reward); the guided row is editforge's extension (reward dropout in
training makes a null reward, and guidance pushes away from it). An edit that was not made keeps
every detail, so a model that edits less scores higher on mean DP; "DP when IF = 5" compares the
edits that were made.

Per task (following accuracy, all eval seeds):

| task | baseline | reward-conditioned |
|---|---|---|
{task_rows}

## Setup

- Seeds: data {config.seed}, held-out {config.seed + 1000}, training {config.seed}, evaluation sampling {config.eval_seeds}.
- Data: {annotation["items"]} synthetic triplets at {config.size}x{config.size} ({config.tasks}), imperfect rate
  {config.imperfect} ({int(100 * config.instruction_failure_share)}% of failures in instruction following, of the
  kinds {config.instruction_failures}: the commonest failure of generated editing data, an "edit" that leaves the
  image as it was; the rest are detail or quality failures);
  {100 * annotation["share_following_5"]:.1f}% of them follow their instruction (IF = 5) by the judge.
- Annotation: oracle judge through the openai client, {annotation["judged"]} judged, {annotation["missing"]} missing,
  agreement with the hidden ground truth {annotation["agreement_with_ground_truth"]}.
- Base model: VAE fitted for {results["vae"]["steps"]} steps (MSE {results["vae"]["final_mse"]}); UNet
  {results["vae"]["unet_parameters"]:,} parameters, text encoder {results["vae"]["text_encoder_parameters"]:,}, both trained.
- Training: {config.train_steps} steps, batch {config.batch_size}, learning rate {config.learning_rate} (cosine),
  v-prediction; baseline {training["baseline"]["seconds"]} s, reward-conditioned {training["reward"]["seconds"]} s.
- Evaluation: {config.eval_items} held-out edits x {len(config.eval_seeds.split(","))} seeds, {config.inference_steps}
  Euler-ancestral steps, text guidance {config.guidance_scale}, image guidance {config.image_guidance_scale}.
- Time per stage (s): {results["timings_s"]}.

The reward-conditioned pipeline is in `{out / "reward"}`:

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("{out / "reward"}", trust_remote_code=True)
```

![grid](grid.png)
"""
    (out / "report.md").write_text(text)
    shutil.copyfile(out / EVAL_FOLDER / "grid.png", out / "grid.png")
