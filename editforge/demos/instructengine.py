"""``editforge demo instructengine``: InstructEngine's text-to-image alignment in miniature, offline.

InstructEngine (arXiv 2504.10329) aligns a text-to-image model without human labels: an LLM writes
base prompts per subtopic of a taxonomy and a contrasting variant per axis, the model draws an
image for each prompt, a judge keeps the pairs where each image matches its own prompt better than
the other, and Diffusion-DPO trains on them; "cross-validation alignment" uses each kept pair twice
(image A preferred under prompt A, image B under prompt B). Does cross-validation align better than
one comparison per pair, at equal pairs and steps? In the synthetic world:

1. **pre-training data**: synthetic scenes (``write_synthetic_dataset``: every edit kind, so styles
   and empty scenes too) as a canonical Hub dataset; each triplet gives two image-caption examples
   (``train_text_to_image.py``'s default ``--columns``): the source with its plain caption, the edit
   with its caption in the prompt writer's counted form ("two shapes: ..."), so the model knows both
   forms the later prompts take;
2. **base model**: a VAE fitted to those images, a tiny random CLIP text encoder over a word-level
   tokenizer and a random 4-channel ``UNet2DConditionModel``, pre-trained from scratch by
   ``training/train_text_to_image.py`` (UNet and text encoder: a random frozen encoder carries too
   little of a caption for the model to follow it); DPO then trains a LoRA on the UNet only;
3. **prompts**: ``generate_prompts`` on the ``synthetic`` taxonomy with the built-in synthetic-world
   writer on a loopback server (base prompts and a content / counterfactual / aesthetics variant each);
4. **pairs**: ``generate_pairs`` with the pre-trained pipeline making both images of every pair
   (seeded per image) and the alignment oracle judging each against both prompts; InstructEngine's
   rule keeps a pair only when each image scores higher under its own prompt;
5. **DPO**: ``training/train_diffusion_dpo.py`` twice from the pre-trained model, LoRA, same pairs,
   steps, batch and seed: ``--alignment single_pair`` (the base prompt's comparison only) and
   ``--alignment cross_validation`` (both);
6. **evaluation** through ``editforge eval``'s harness on held-out prompts (the ``synthetic-prompts``
   suite, its own seed), every sampling seed of ``--eval_seeds``, judged by the alignment oracle
   (t2i-alignment): base vs single-pair vs cross-validation DPO, and each prompt's ideal rendering
   through the VAE as a ceiling;
7. **report**: ``report.md`` (mean alignment and share fully aligned, with bootstrap intervals and per
   seed, per number of shapes, paired differences, the pairs made / kept / dropped / missing, the
   DPO runs' reward accuracy and margin, stage times), ``results.json`` and ``grid.png``.

A rerun with the same settings reuses every finished stage (``demo_state.json``, as the main demo).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from editforge.demo import (
    StageClock,
    _stage,
    _Stages,
    dataset_pixels,
    fit_vae,
    item_rows,
    through_vae,
    train_in_processes,
    write_image,
)
from editforge.training.config import help_field

MODELS = ("single_pair", "cross_validation")  # the DPO runs, by --alignment
BASE = "base"  # the pre-trained model, in the evaluation
CEILING = "vae_ceiling"
PAIR_IMAGES = ("model", "ideal")  # --pair_images
LABELS = {BASE: "base (pre-trained, no DPO)", "single_pair": "Diffusion-DPO, single pair",
          "cross_validation": "Diffusion-DPO, cross-validation (InstructEngine)",
          CEILING: "ceiling: ideal renderings through the VAE"}
EVAL_FOLDER, CEILING_FOLDER = "eval", "vae_ceiling"
TOKENS = 64  # the tokenizer's prompt length: a four-shape styled prompt is about 45 word tokens
PAIRED_RESAMPLES, PAIRED_SEED = 1000, 0
COMPARISONS = (("single_pair", BASE), ("cross_validation", BASE), ("cross_validation", "single_pair"))  # a minus b


@dataclass
class InstructEngineConfig:
    """Settings of ``editforge demo instructengine`` (each is a ``--flag``)."""

    out: str = help_field("output folder (a rerun with the same settings resumes there)", default="demo_instructengine")
    seed: int = help_field("seed of the pre-training scenes, the prompt writer, the pair images and training",
                           default=0)
    size: int = help_field("image side in pixels", default=32)
    train_items: int = help_field("pre-training triplets (two image-caption examples each)", default=2000)
    vae_steps: int = help_field("steps fitting the base model's VAE to the images", default=600)
    vae_channels: str = help_field("VAE block widths", default="32,64")
    unet_channels: str = help_field("UNet block widths", default="32,64")
    text_width: int = help_field("width of the CLIP text encoder", default=64)
    text_layers: int = help_field("layers of the CLIP text encoder", default=2)
    train_text_encoder: bool = help_field("pre-train the text encoder with the UNet (else it stays random)",
                                          default=True)
    pretrain_steps: int = help_field("pre-training steps (train_text_to_image.py, the whole UNet)", default=2000)
    pretrain_batch_size: int = help_field("pre-training batch size", default=32)
    pretrain_learning_rate: float = help_field("peak pre-training learning rate (cosine)", default=1e-3)
    caption_dropout: float = help_field("share of pre-training examples with the empty caption (what guidance needs)",
                                        default=0.1)
    per_subtopic: int = help_field("base prompts per subtopic of the synthetic taxonomy (41 subtopics)", default=8)
    axes: str = help_field("contrast axes, comma-separated (content, counterfactual, aesthetics)",
                           default="content,counterfactual,aesthetics")
    train_steps: int = help_field("Diffusion-DPO steps of each run", default=300)
    batch_size: int = help_field("Diffusion-DPO batch size (pairs)", default=8)
    learning_rate: float = help_field("Diffusion-DPO peak learning rate (cosine)", default=2e-3)
    beta_dpo: float = help_field("Diffusion-DPO beta (the paper's; lower: the model may move further from the "
                                 "base)", default=250.0)
    rank: int = help_field("LoRA rank of the DPO adapters", default=8)
    lora_target_modules: str = help_field("modules the DPO adapters wrap (train_diffusion_dpo.py's "
                                          "--lora_target_modules)", default="to_q,to_k,to_v,to_out.0")
    eval_items: int = help_field("held-out prompts (the synthetic-prompts suite)", default=100)
    eval_suite_seed: int = help_field("seed of the held-out prompts (not the pre-training or writer seed)",
                                      default=2000)
    eval_styled: float = help_field("share of held-out prompts with a style", default=0.25)
    eval_seeds: str = help_field("sampling seeds of the evaluation, comma-separated", default="0,1")
    pair_images: str = help_field(
        "who draws the pairs' images: 'model' (the pre-trained model, InstructEngine's way) or 'ideal' (each "
        "prompt's ideal rendering through the VAE: a diagnostic of DPO on pairs the base model cannot make)",
        default="model")
    inference_steps: int = help_field("denoising steps per image (pairs and evaluation)", default=15)
    guidance_scale: float = help_field("text guidance (1: none; above 1 needs --caption_dropout)",
                                       default=3.0)
    generation_batch_size: int = help_field("images per pipeline call", default=32)
    parallel_training: bool = help_field("train both DPO runs at once, one process each", default=True)
    grid_rows: int = help_field("held-out prompts shown in grid.png", default=12)
    progress: bool = help_field("progress bars", default=True)

    @property
    def axis_list(self) -> tuple[str, ...]:
        return tuple(a for a in self.axes.split(",") if a)

    @property
    def suite(self) -> str:
        return f"synthetic-prompts:n={self.eval_items},seed={self.eval_suite_seed},sizes={self.size}x{self.size}," \
               f"styled={self.eval_styled}"


_DATA_KEYS = ("seed", "size", "train_items")
_VAE_KEYS = _DATA_KEYS + ("vae_steps", "vae_channels")
_BASE_KEYS = _VAE_KEYS + ("unet_channels", "text_width", "text_layers")
_PRETRAIN_KEYS = _BASE_KEYS + ("train_text_encoder", "pretrain_steps", "pretrain_batch_size", "pretrain_learning_rate",
                               "caption_dropout")
_PROMPT_KEYS = ("seed", "per_subtopic", "axes")
_PAIR_KEYS = _PRETRAIN_KEYS + _PROMPT_KEYS + ("inference_steps", "guidance_scale", "pair_images")
_TRAIN_KEYS = _PAIR_KEYS + ("train_steps", "batch_size", "learning_rate", "beta_dpo", "rank", "lora_target_modules")
_EVAL_KEYS = _TRAIN_KEYS + ("eval_items", "eval_suite_seed", "eval_styled", "eval_seeds")


def run_instructengine_demo(config: InstructEngineConfig) -> dict:
    """Run the whole demo into ``config.out``; return the results (also in results.json)."""
    from editforge.commands.arguments import writable_dir

    _check(config)
    out = writable_dir(config.out)
    stages = _Stages(out, config)
    clock = StageClock()
    lap = clock.lap
    total = 8

    def folder_done(key: str = "folder", marker: str = "model_index.json"):
        return lambda r: (Path(r[key]) / marker).is_file()

    _stage(1, total, f"pre-training data: {config.train_items} synthetic triplets as a Hub dataset "
                     f"({2 * config.train_items} image-caption examples)")
    dataset = stages.run("dataset", _DATA_KEYS, lambda: _make_dataset(config, out), folder_done(marker="README.md"))
    lap("data")

    _stage(2, total, "tiny text-to-image base: fitting a VAE to the images; tokenizer, text encoder, random UNet")
    vae = stages.run("vae", _VAE_KEYS, lambda: _fit_vae(config, out, Path(dataset["folder"])),
                     folder_done(marker="config.json"))
    base = stages.run("base_model", _BASE_KEYS, lambda: _make_base_model(config, out, Path(dataset["folder"]), vae),
                      folder_done())
    lap("base_model")

    _stage(3, total, f"pre-training the UNet with train_text_to_image.py, {config.pretrain_steps} steps")
    pretrained = stages.get(BASE, _PRETRAIN_KEYS, folder_done())
    if pretrained is None:
        steps = replace(config, train_steps=config.pretrain_steps)  # what train_in_processes counts
        pretrained = train_in_processes(steps, out, "editforge.training.train_text_to_image",
                                        {BASE: _pretrain_arguments(config, out, Path(base["folder"]),
                                                                   Path(dataset["folder"]))})[BASE]
        stages.put(BASE, _PRETRAIN_KEYS, pretrained)
    lap("pretraining")

    _stage(4, total, f"prompts: the synthetic taxonomy, {config.per_subtopic} base prompts per subtopic, a variant "
                     f"per axis ({config.axes}), by the built-in writer through the openai client (loopback)")
    prompts = stages.run("prompts", _PROMPT_KEYS, lambda: _make_prompts(config, out), folder_done(marker="README.md"))
    lap("prompts")

    _stage(5, total, f"pairs: the pre-trained model draws both images of {prompts['pairs']} prompt pairs, the "
                     f"alignment oracle judges each against both prompts, InstructEngine's rule keeps them")
    pairs = stages.run("pairs", _PAIR_KEYS, lambda: _make_pairs(config, out, Path(prompts["folder"])),
                       lambda r: r["folder"] is not None and (Path(r["folder"]) / "README.md").is_file())
    lap("pairs")
    if not pairs["kept"]:
        from editforge.errors import EditforgeError

        raise EditforgeError(f"no pair passed InstructEngine's rule ({pairs['pairs']} pairs, dropped "
                             f"{pairs['dropped']}, missing {pairs['missing']}): nothing to train DPO on; pre-train "
                             f"longer (--pretrain_steps) or make more pairs (--per_subtopic)")

    _stage(6, total, f"Diffusion-DPO (LoRA rank {config.rank}) from the pre-trained model on the {pairs['kept']} kept "
                     f"pairs: single pair and cross-validation, {config.train_steps} steps each")
    training = {name: stages.get(name, _TRAIN_KEYS, folder_done("merged")) for name in MODELS}
    pending = [name for name in MODELS if training[name] is None]
    arguments = {name: _dpo_arguments(config, out, Path(pretrained["folder"]), Path(pairs["folder"]), name,
                                      pairs["kept"]) for name in pending}
    for name, result in train_in_processes(config, out, "editforge.training.train_diffusion_dpo", arguments).items():
        result.update(_dpo_logs(out / name), merged=_merge_lora(out / name))
        training[name] = result
        stages.put(name, _TRAIN_KEYS, result)
    lap("dpo")

    _stage(7, total, f"evaluation (editforge eval): {config.eval_items} held-out prompts x seeds {config.eval_seeds}, "
                     f"the base model, both DPO runs and the VAE ceiling, judged by the alignment oracle")
    evaluation = _evaluate(config, out, stages, pretrained, training)
    lap("evaluation")

    _stage(8, total, "writing the report")
    rows = item_rows(out / EVAL_FOLDER)
    results = {
        "config": asdict(config),
        "timings_s": clock.wall,
        "cpu_seconds": clock.cpu,
        "dataset": dataset,
        "base_model": {**vae, **base},
        "pretraining": pretrained,
        "prompts": prompts,
        "pairs": pairs,
        "training": training,
        "scores": _scores(evaluation),
        "paired": {f"{a}-{b}": _paired(rows, a, b, evaluation.groups) for a, b in COMPARISONS},
        "mismatches": _mismatches(rows),
        "held_out_overlap": _overlap(config, Path(dataset["folder"]), Path(pairs["folder"])),
        "evaluation_folder": str(out / EVAL_FOLDER),
    }
    _write_report(config, out, results, evaluation)
    lap("report")
    clock.total()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print((out / "report.md").read_text())
    return results


def _check(config: InstructEngineConfig) -> None:
    from editforge.errors import UsageError
    from editforge.vocabulary import CONTRAST_AXES

    unknown = [a for a in config.axis_list if a not in CONTRAST_AXES]
    if unknown or not config.axis_list:
        raise UsageError(f"--axes: unknown {unknown} (the contrast axes: {', '.join(CONTRAST_AXES)})")
    if config.pair_images not in PAIR_IMAGES:
        raise UsageError(f"--pair_images must be one of {', '.join(PAIR_IMAGES)}, got {config.pair_images!r}")
    if config.size < 32:
        raise UsageError(f"--size must be 32 or more (the alignment oracle reads images of 32 px and up), got "
                         f"{config.size}")


# -- data and the base model ---------------------------------------------------------------------

def _counted(caption: str) -> str:
    """A world caption in the prompt writer's counted form: 'two shapes: ...'."""
    from editforge.dataset_builders.prompts.synthetic_writer import world_prompt
    from editforge.dataset_builders.synthetic.alignment import parse_prompt

    return world_prompt(*parse_prompt(caption))


def _make_dataset(config: InstructEngineConfig, out: Path) -> dict:
    """Perfect synthetic triplets of every edit kind, the edits' captions in the counted form, as a Hub
    dataset (``build-dataset --format manifest``)."""
    from datasets import load_dataset

    from editforge.dataset_builders import build_dataset
    from editforge.dataset_builders.manifest import read_manifest
    from editforge.dataset_builders.synthetic import TASKS, write_synthetic_dataset

    data, folder = out / "data" / "pretraining", out / "dataset"
    for old in (data, folder):
        if old.exists():
            shutil.rmtree(old)  # made with other settings
    manifest = write_synthetic_dataset(data, n=config.train_items, seed=config.seed, imperfect_rate=0.0,
                                       width=config.size, height=config.size, tasks=TASKS, progress=config.progress)
    records = [{**r, "target_caption": _counted(r["target_caption"])} for r in read_manifest(manifest)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = build_dataset("manifest", manifest, folder, config="default", split="train", progress=config.progress,
                           on_error="fail")
    dataset = load_dataset(str(folder), "default", split="train")
    shapes = Counter(_shape_count(c) for c in list(dataset["source_caption"]) + list(dataset["target_caption"]))
    return {"folder": str(folder), "rows": len(dataset), "examples": 2 * len(dataset), "skipped": len(report.skipped),
            "captions_by_shapes": {str(k): shapes[k] for k in sorted(shapes)}}


def _shape_count(prompt: str) -> int:
    from editforge.dataset_builders.synthetic.alignment import parse_prompt

    return len(parse_prompt(prompt)[0].shapes)


def _fit_vae(config: InstructEngineConfig, out: Path, dataset_dir: Path) -> dict:
    from datasets import load_dataset

    dataset = load_dataset(str(dataset_dir), "default", split="train")
    vae, losses = fit_vae(config, dataset_pixels(dataset))
    folder = out / "vae"
    vae.save_pretrained(folder)
    tail = losses[-50:]
    return {"folder": str(folder), "vae_steps": config.vae_steps, "vae_mse": round(sum(tail) / len(tail), 5)}


def _make_base_model(config: InstructEngineConfig, out: Path, dataset_dir: Path, vae_info: dict) -> dict:
    """The untrained StableDiffusionPipeline: the fitted VAE, a word-level CLIP tokenizer and a tiny random
    CLIP text encoder, a random 4-channel UNet, a v-prediction Euler sampler."""
    import torch
    from datasets import load_dataset
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from editforge.dataset_builders.synthetic.alignment import COUNT_WORDS
    from editforge.testing.tiny_models import build_clip_tokenizer, synthetic_world_words, tiny_clip_text_encoder

    dataset = load_dataset(str(dataset_dir), "default", split="train")
    vae = AutoencoderKL.from_pretrained(vae_info["folder"])
    words = synthetic_world_words() + list(COUNT_WORDS) + ["no", "shape", "shapes"]
    tokenizer = build_clip_tokenizer(words + list(dataset["source_caption"]) + list(dataset["target_caption"]),
                                     model_max_length=TOKENS)
    text_encoder = tiny_clip_text_encoder(len(tokenizer), hidden_size=config.text_width, seed=config.seed)
    if config.text_layers != text_encoder.config.num_hidden_layers:
        from transformers import CLIPTextModel

        torch.manual_seed(config.seed)
        text_encoder = CLIPTextModel(replace_config(text_encoder.config, num_hidden_layers=config.text_layers)).eval()
    longest = max(len(tokenizer(c).input_ids) for c in dataset["target_caption"])
    channels = tuple(int(c) for c in config.unet_channels.split(","))
    vae_channels = tuple(int(c) for c in config.vae_channels.split(","))
    torch.manual_seed(config.seed)
    unet = UNet2DConditionModel(
        block_out_channels=channels, layers_per_block=1, sample_size=config.size // 2 ** (len(vae_channels) - 1),
        in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
        cross_attention_dim=config.text_width, attention_head_dim=8, norm_num_groups=16,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, prediction_type="v_prediction", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    folder = out / "base_init"
    pipe.save_pretrained(folder)
    return {"folder": str(folder), "vocabulary": len(tokenizer), "longest_caption_tokens": longest,
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters())}


def replace_config(config, **changes):
    """A copy of a transformers config with ``changes``."""
    return type(config)(**{**config.to_dict(), **changes})


def _common_arguments(base_dir: Path, dataset_dir: Path, output: Path, size: int, batch: int, steps: int,
                      learning_rate: float, seed: int) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(base_dir), "--dataset_name", str(dataset_dir),
        "--output_dir", str(output), "--resolution", str(size), "--train_batch_size", str(batch),
        "--max_train_steps", str(steps), "--learning_rate", str(learning_rate), "--lr_scheduler", "cosine",
        "--lr_warmup_steps", str(min(100, steps // 10)), "--seed", str(seed), "--cache_latents",
        "--checkpointing_steps", "0", "--num_validation_images", "0", "--no-progress", "--logging_steps", "1",
    ]


def _pretrain_arguments(config: InstructEngineConfig, out: Path, base_dir: Path, dataset_dir: Path) -> list[str]:
    return _common_arguments(base_dir, dataset_dir, out / BASE, config.size, config.pretrain_batch_size,
                             config.pretrain_steps, config.pretrain_learning_rate, config.seed) + [
        "--full", "--train_text_encoder" if config.train_text_encoder else "--no-train_text_encoder",
        "--caption_dropout_prob", str(config.caption_dropout)]


# -- prompts and pairs -----------------------------------------------------------------------------

def _make_prompts(config: InstructEngineConfig, out: Path) -> dict:
    from editforge.dataset_builders.prompts import generate_prompts

    folder = out / "prompts"
    if folder.exists():
        shutil.rmtree(folder)
    report = generate_prompts("synthetic", folder, per_subtopic=config.per_subtopic, axes=config.axis_list,
                              cache=out / "cache" / "prompts.sqlite", seed=config.seed, progress=config.progress)
    return {"folder": str(folder), "subtopics": report.subtopics, "base_prompts": report.base_prompts,
            "near_duplicates": report.near_duplicates, "not_contrasting": report.not_contrasting,
            "missing_subtopics": report.missing_subtopics, "pairs": report.pairs,
            "pairs_per_axis": report.pairs_per_axis, "model": report.model}


def _make_pairs(config: InstructEngineConfig, out: Path, prompts_dir: Path) -> dict:
    """``generate_pairs`` with the pre-trained pipeline and the oracle (the harness's generation loop and
    judge thread, as ``editforge generate-pairs`` runs them)."""
    from editforge.commands.generate_pairs import PipelineImages, ThreadJudge
    from editforge.dataset_builders.prompts.generation import REPORT_NAME
    from editforge.dataset_builders.prompts.pairs import generate_pairs, read_prompt_pairs
    from editforge.evaluation import ModelSpec

    folder = out / "pairs"
    if folder.exists():
        shutil.rmtree(folder)  # made by another model or with other prompts
    if config.pair_images == "ideal":  # made elsewhere (outputs:PATH): every prompt drawn as asked, through the VAE
        spec, size = ModelSpec("ideal", f"outputs:{_ideal_pair_images(config, out, prompts_dir)}"), None
    else:
        spec, size = ModelSpec(BASE, str(out / BASE), _call_args(config)), (config.size, config.size)
    images = PipelineImages(spec, seed=config.seed, size=size, batch_size=config.generation_batch_size,
                            progress=config.progress)
    report = generate_pairs(prompts_dir, folder, images, ThreadJudge(judge="oracle"), progress=config.progress)
    judged = json.loads((folder / REPORT_NAME).read_text())["pairs_judged"]
    axis = {p.pair_id: p.contrast for p in read_prompt_pairs(prompts_dir)}
    per_axis: dict[str, Counter] = {}
    own = Counter()  # the pre-trained model's images fully aligned with their own prompt
    for record in judged:
        per_axis.setdefault(axis[record["pair_id"]], Counter())[record["outcome"]] += 1
        own.update(f"{side}_aligned" for side in ("base", "contrast")
                   if record["scores"][f"{side}_image"][f"{side}_prompt"] == 5)
    return {"folder": str(report.output) if report.output else None, "pairs": report.pairs, "images_made": report.made,
            "answers": report.answers, "missing_answers": report.missing_answers, "kept": report.kept,
            "dropped": report.dropped, "missing": report.missing, "rows": report.rows,
            "per_axis": {a: dict(c) for a, c in sorted(per_axis.items())},
            "own_prompt_fully_aligned": {k: round(own[k] / max(1, report.pairs), 4)
                                         for k in ("base_aligned", "contrast_aligned")},
            "seconds": report.elapsed}


def _ideal_pair_images(config: InstructEngineConfig, out: Path, prompts_dir: Path) -> Path:
    """Both images of every prompt pair as each prompt's ideal rendering (``render_prompt``) through the
    base model's VAE (``--pair_images ideal``), written once."""
    from diffusers import AutoencoderKL

    from editforge.dataset_builders.annotation.sources import file_stem
    from editforge.dataset_builders.prompts.pairs import SIDES, read_prompt_pairs
    from editforge.dataset_builders.synthetic.alignment import render_prompt

    folder = out / "pair_images_ideal"
    if folder.exists():
        shutil.rmtree(folder)  # other prompts or another VAE
    folder.mkdir(parents=True)
    vae = AutoencoderKL.from_pretrained(out / BASE / "vae").eval()
    for pair in read_prompt_pairs(prompts_dir):
        for side in SIDES:
            image = render_prompt(pair.prompt(side), config.size, config.size)
            write_image(folder / f"{file_stem(pair.image_id(side))}.png", through_vae(vae, image))
    return folder


def _call_args(config: InstructEngineConfig) -> dict:
    return {"num_inference_steps": config.inference_steps, "guidance_scale": config.guidance_scale}


# -- Diffusion-DPO ---------------------------------------------------------------------------------

def _dpo_arguments(config: InstructEngineConfig, out: Path, pretrained: Path, pairs_dir: Path, name: str,
                   kept: int) -> list[str]:
    """The DPO flags; the batch is at most the kept pairs."""
    return _common_arguments(pretrained, pairs_dir, out / name, config.size, min(config.batch_size, kept),
                             config.train_steps,
                             config.learning_rate, config.seed) + [
        "--no-full", "--rank", str(config.rank), "--lora_target_modules", config.lora_target_modules,
        "--beta_dpo", str(config.beta_dpo), "--alignment", name]


def _dpo_logs(folder: Path) -> dict:
    """The implicit reward accuracy and margin the DPO trainer logged: over the first and the last fifth of
    its steps."""
    from editforge.training.core import read_metrics

    logged = [v for _, v in sorted(read_metrics(folder).items()) if "reward_accuracy" in v]
    fifth = max(1, len(logged) // 5)

    def mean(values, key):
        return round(sum(v[key] for v in values) / len(values), 4) if values else None

    return {f"{key}_{part}": mean(chunk, key) for key in ("reward_accuracy", "reward_margin")
            for part, chunk in (("first", logged[:fifth]), ("last", logged[-fifth:]))}


def _merge_lora(folder: Path) -> str:
    """The DPO output (the base UNet with the LoRA file beside it, as diffusers' ``load_lora_weights`` reads it)
    with the adapter fused into the UNet, as a plain pipeline folder the harness loads."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging

    merged = folder / "merged"
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # not "no LoRA keys for the text encoder": DPO trains the UNet only
    try:
        pipe.load_lora_weights(folder, weight_name="pytorch_lora_weights.safetensors")
    finally:
        logging.set_verbosity(verbosity)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.save_pretrained(merged)
    return str(merged)


# -- evaluation ------------------------------------------------------------------------------------

def _evaluate(config: InstructEngineConfig, out: Path, stages: _Stages, pretrained: dict, training: dict):
    from editforge.evaluation import ModelSpec, evaluate, load_suite

    folder = out / EVAL_FOLDER
    if stages.get("evaluation", _EVAL_KEYS) is None:
        for old in (folder, out / CEILING_FOLDER):  # other models or settings: not these images and answers
            if old.exists():
                shutil.rmtree(old)
    stages.put("evaluation", _EVAL_KEYS, {"folder": str(folder)})
    suite = load_suite(config.suite)
    ceiling = _vae_ceiling(out, Path(pretrained["folder"]), suite)
    models = [ModelSpec(BASE, pretrained["folder"], _call_args(config))]
    models += [ModelSpec(name, training[name]["merged"], _call_args(config)) for name in MODELS]
    models.append(ModelSpec(CEILING, f"outputs:{ceiling}"))
    return evaluate(models, suite, folder, seeds=config.eval_seeds, batch_size=config.generation_batch_size,
                    progress=config.progress, grid_rows=config.grid_rows)


def _vae_ceiling(out: Path, model_dir: Path, suite) -> Path:
    """Each held-out prompt's ideal rendering (``render_prompt``) through the VAE, written once."""
    from diffusers import AutoencoderKL

    from editforge.dataset_builders.annotation.sources import file_stem
    from editforge.dataset_builders.synthetic.alignment import render_prompt

    folder = out / CEILING_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    todo = [item for item in suite.items if not (folder / f"{file_stem(item.id)}.png").is_file()]
    if todo:
        vae = AutoencoderKL.from_pretrained(model_dir / "vae").eval()
        for item in todo:
            image = render_prompt(item.instruction, item.width, item.height)
            write_image(folder / f"{file_stem(item.id)}.png", through_vae(vae, image))
    return folder


def _overlap(config: InstructEngineConfig, dataset_dir: Path, pairs_dir: Path) -> dict:
    """How many held-out prompts describe a scene (and style) that a pre-training caption or a DPO prompt
    describes too (the world is small: one-shape scenes repeat)."""
    from datasets import load_dataset

    from editforge.dataset_builders.synthetic.alignment import parse_prompt
    from editforge.evaluation import load_suite

    def content(prompt):
        scene, style = parse_prompt(prompt)
        return scene.background, tuple((s.kind, s.colour, s.slot) for s in scene.shapes), style

    dataset = load_dataset(str(dataset_dir), "default", split="train")
    seen = {content(c) for c in list(dataset["source_caption"]) + list(dataset["target_caption"])}
    dpo = {content(p) for p in load_dataset(str(pairs_dir), split="train")["prompt"]}
    held = [content(item.instruction) for item in load_suite(config.suite).items]
    return {"prompts": len(held), "in_pretraining": sum(h in seen for h in held),
            "in_dpo_pairs": sum(h in dpo for h in held)}


# -- results ---------------------------------------------------------------------------------------

FIGURES = ("mean_alignment", "alignment_accuracy")


def _scores(evaluation) -> dict:
    """results.json's ``scores``: each model's figures (value, 95% interval, per seed), overall and per group."""
    scores = {}
    for name, model in evaluation.models.items():
        groups = model["subsets"]["all"]
        overall = groups["all"]
        scores[name] = {"items": overall["items"], "rows": overall["rows"], "judged": overall["judged"],
                        "missing": overall["missing"], **{f: overall["figures"][f] for f in FIGURES},
                        "per_group": {g: {"rows": s["rows"], **{f: s["figures"][f]["value"] for f in FIGURES}}
                                      for g, s in groups.items() if g != "all"}}
    return scores


def _mismatches(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per model, the mismatches the oracle's feedback names over all its judged images, by kind (a shape's
    colour or kind, another shape, a place, a missing or extra shape, the count, the background, the style)."""
    from editforge.dataset_builders.synthetic.alignment import MISMATCH_KINDS, mismatch_kinds
    from editforge.vocabulary import ALIGNMENT

    totals = {m: dict.fromkeys(MISMATCH_KINDS, 0) for m in (BASE, *MODELS, CEILING)}
    for row in rows:
        if row["model"] in totals and row.get("answer") is not None:
            for kind, n in mismatch_kinds(row["answer"][ALIGNMENT]["feedback"]).items():
                totals[row["model"]][kind] += n
    return totals


def _paired(rows: list[dict], a: str, b: str, groups) -> dict:
    """Model ``a`` minus model ``b`` on the same (prompt, seed) images, with a paired bootstrap over prompts
    (every seed of a prompt resampled together): mean alignment and share fully aligned; overall and per group."""
    import numpy as np

    from editforge.vocabulary import ALIGNMENT, MAX_REWARD

    by_model: dict[str, dict] = {a: {}, b: {}}
    for row in rows:
        if row["model"] in by_model and row.get("metrics") is not None:
            by_model[row["model"]][(row["item"], row["seed"])] = row

    def compare(keys):
        items = sorted({item for item, _ in keys})
        index = {item: i for i, item in enumerate(items)}
        sums = np.zeros((len(items), 3))  # per prompt: score difference, fully-aligned difference, rows
        for key in keys:
            sa, sb = (by_model[m][key]["metrics"][ALIGNMENT] for m in (a, b))
            sums[index[key[0]]] += [sa - sb, float(sa == MAX_REWARD) - float(sb == MAX_REWARD), 1]

        def stats(s):
            total = s.sum(axis=0)
            return [total[0] / total[2], total[1] / total[2]] if total[2] else [None, None]

        result = {**dict(zip(FIGURES, stats(sums))), "rows": int(sums[:, 2].sum())}
        if len(items) > 1:
            rng = np.random.default_rng(PAIRED_SEED)
            draws = np.array([stats(sums[rng.integers(0, len(items), len(items))]) for _ in range(PAIRED_RESAMPLES)])
            for k, figure in enumerate(FIGURES):
                result[f"{figure}_ci95"] = [round(float(np.percentile(draws[:, k], q)), 4) for q in (2.5, 97.5)]
        return {k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in result.items()}

    keys = sorted(set(by_model[a]) & set(by_model[b]))
    present = {by_model[a][k]["task"] for k in keys}
    return {"all": compare(keys),
            "per_group": {g: compare([k for k in keys if by_model[a][k]["task"] == g]) for g in groups if g in present}}


def _write_report(config: InstructEngineConfig, out: Path, results: dict, evaluation) -> None:
    scores, paired, pairs, prompts = results["scores"], results["paired"], results["pairs"], results["prompts"]
    drawer, seeded, owner = "The pre-trained model", ", seeded per image", "The pre-trained model's image"
    if config.pair_images == "ideal":
        drawer, seeded, owner = ("`--pair_images ideal` (each prompt's ideal rendering through the VAE, not the "
                                 "model)", "", "The ideal rendering")
    training, pretraining, base = results["training"], results["pretraining"], results["base_model"]

    def number(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    def percent(value):
        return "-" if value is None else f"{100 * value:.1f}"

    def interval(ci, show=number):
        return f" [{show(ci[0])}, {show(ci[1])}]" if ci else ""

    def signed(value, scale=1, digits=2):
        return "-" if value is None else f"{scale * value:+.{digits}f}"

    def row(name):
        s = scores[name]
        mean, share = s["mean_alignment"], s["alignment_accuracy"]
        return (f"| {LABELS[name]} | **{number(mean['value'])}**{interval(mean['ci95'])} "
                f"({', '.join(number(v) for v in mean['per_seed'].values())}) | "
                f"**{percent(share['value'])}%**{interval(share['ci95'], percent)} "
                f"({', '.join(percent(v) for v in share['per_seed'].values())}) | {s['judged']}/{s['rows']} |")

    def diff(p, figure, scale=1, digits=2):
        ci = p.get(f"{figure}_ci95")
        return signed(p[figure], scale, digits) + (
            f" [{signed(ci[0], scale, digits)}, {signed(ci[1], scale, digits)}]" if ci else "")

    table = "\n".join(row(name) for name in scores)
    groups = [g for g in evaluation.groups if g in scores[BASE]["per_group"]]
    group_rows = "\n".join(
        f"| {g} | {scores[BASE]['per_group'][g]['rows']} | " + " | ".join(
            f"{number(scores[m]['per_group'][g]['mean_alignment'])} / "
            f"{percent(scores[m]['per_group'][g]['alignment_accuracy'])}%" for m in (BASE, *MODELS, CEILING))
        + f" | {diff(paired['cross_validation-single_pair']['per_group'][g], 'mean_alignment')} |"
        for g in groups)
    mismatches = results["mismatches"]
    kinds = list(next(iter(mismatches.values())))
    mismatch_rows = "\n".join(f"| {LABELS[m].split(' (')[0]} | " + " | ".join(str(mismatches[m][k]) for k in kinds) + " |"
                               for m in mismatches)
    paired_rows = "\n".join(
        f"| {LABELS[key.split('-')[0]]} minus {LABELS[key.split('-')[1]].split(' (')[0]} | "
        f"{diff(p['all'], 'mean_alignment')} | {diff(p['all'], 'alignment_accuracy', 100, 1)} points |"
        for key, p in paired.items())
    cv = paired["cross_validation-single_pair"]["all"]
    ci = cv.get("mean_alignment_ci95")
    if ci and ci[0] > 0:
        verdict = (f"Cross-validation DPO **aligns better** than single-pair DPO at equal pairs and steps: mean "
                   f"alignment {diff(cv, 'mean_alignment')} (paired 95% interval excludes 0).")
    elif ci and ci[1] < 0:
        verdict = (f"Cross-validation DPO aligns **worse** than single-pair DPO here: mean alignment "
                   f"{diff(cv, 'mean_alignment')} (paired 95% interval).")
    else:
        verdict = (f"**No measurable difference** between cross-validation and single-pair DPO here: mean alignment "
                   f"{diff(cv, 'mean_alignment')} (paired 95% interval includes 0).")
    moved = {m: paired[f"{m}-{BASE}"]["all"] for m in MODELS}
    verdict += " Against the base model: " + "; ".join(
        f"{LABELS[m].split(', ')[1]} {diff(p, 'mean_alignment')} mean alignment, "
        f"{diff(p, 'alignment_accuracy', 100, 1)} points fully aligned" for m, p in moved.items()) + "."
    axis_rows = "\n".join(
        f"| {axis} | {sum(c.values())} | {c.get('kept', 0)} | {c.get('dropped', 0)} | {c.get('missing', 0)} |"
        for axis, c in pairs["per_axis"].items())
    dropped = pairs["dropped"]
    dpo_rows = "\n".join(
        f"| {name} | {t['steps']} | {2 * pairs['kept'] if name == 'cross_validation' else pairs['kept']} | "
        f"{t['final_loss']} | {percent(t['reward_accuracy_first'])}% -> {percent(t['reward_accuracy_last'])}% | "
        f"{number(t['reward_margin_first'], 3)} -> {number(t['reward_margin_last'], 3)} | {t['seconds']} |"
        for name, t in training.items())
    overlap = results["held_out_overlap"]
    text = f"""# editforge demo instructengine: InstructEngine's cross-validation Diffusion-DPO, in miniature

{verdict}

| model | mean alignment 0..5 [95% interval] (per eval seed) | fully aligned (score 5) [95%] (per seed) | judged |
|---|---|---|---|
{table}

Paired differences (the same held-out prompts and sampling seeds; bootstrap over prompts, {PAIRED_RESAMPLES}
resamples):

| comparison | mean alignment [95%] | fully aligned [95%] |
|---|---|---|
{paired_rows}

Scores are the alignment oracle's (the `t2i-alignment` rubric, 0..5: 5 when every shape, the count, the
background and the style are as asked; read from the pixels) through `editforge eval`'s harness (its run
is in `{EVAL_FOLDER}/`: every image, every answer in `items.jsonl`, its own `report.md`). Paper (SD1.5,
DrawBench): +10.53%.

Per number of shapes asked (mean alignment / fully aligned):

| group | rows | base | single pair | cross-validation | VAE ceiling | cross-validation minus single pair [95%] |
|---|---|---|---|---|---|---|
{group_rows}

What the oracle names on the held-out images (mismatches over all {scores[BASE]['rows']} images of each model, by
kind; DPO that drifts off the base model's images shows as colours, backgrounds and styles no prompt asked for):

| model | {' | '.join(kinds)} |
|{'---|' * (len(kinds) + 1)}
{mismatch_rows}

## The pairs

{prompts['pairs']} prompt pairs from {prompts['base_prompts']} base prompts ({prompts['subtopics']} subtopics of the
synthetic taxonomy, {config.per_subtopic} each; {prompts['near_duplicates']} near-duplicates removed,
{prompts['not_contrasting']} variants without a contrast, {prompts['missing_subtopics']} subtopics missing), written by
{prompts['model']}. {drawer} drew {pairs['images_made']} images (both of every pair{seeded}); the
oracle gave {pairs['answers']} answers ({pairs['missing_answers']} missing). InstructEngine's rule (each image scores
higher under its own prompt than under the other) kept **{pairs['kept']}** of {pairs['pairs']} pairs; dropped
{sum(dropped.values())} (the base image failed {dropped['base']}, the contrast image {dropped['contrast']}, both
{dropped['both']}); missing an answer {pairs['missing']}. {owner} was fully aligned with its own
prompt for {percent(pairs['own_prompt_fully_aligned']['base_aligned'])}% of the base prompts and
{percent(pairs['own_prompt_fully_aligned']['contrast_aligned'])}% of the contrast prompts.

| contrast axis | pairs | kept | dropped | missing |
|---|---|---|---|---|
{axis_rows}

## Diffusion-DPO

Both runs: `train_diffusion_dpo.py` from the pre-trained model, LoRA rank {config.rank}, the same {pairs['kept']} pairs,
{config.train_steps} steps, batch {config.batch_size} pairs, learning rate {config.learning_rate} (cosine), beta
{config.beta_dpo:g} (loss `-log sigmoid(-(beta/2) * ((err_w - ref_w) - (err_l - ref_l)))`, the reference being the
UNet with the adapter disabled), seed {config.seed}. Single pair: one comparison per pair (the base prompt
preferring its image); cross-validation: both (each image preferred under its own prompt), with one noise and
timestep for the two. Reward accuracy and margin are the trainer's logs (first -> last fifth of the steps).

| run | steps | comparisons per epoch | final loss | reward accuracy | reward margin | seconds |
|---|---|---|---|---|---|---|
{dpo_rows}

## Setup

- Seeds: pre-training scenes, prompt writer, pair images and training {config.seed}; held-out prompts
  {config.eval_suite_seed} (`{config.suite}`); evaluation sampling {config.eval_seeds}. Of the
  {overlap['prompts']} held-out prompts, {overlap['in_pretraining']} describe a scene a pre-training caption
  describes too and {overlap['in_dpo_pairs']} one a DPO prompt does (the world is small: one-shape scenes repeat).
- Pre-training data: {results['dataset']['rows']} synthetic triplets at {config.size}x{config.size} (every edit kind),
  {results['dataset']['examples']} image-caption examples (captions by number of shapes:
  {results['dataset']['captions_by_shapes']}).
- Base model: VAE {config.vae_channels} fitted for {base['vae_steps']} steps (MSE {base['vae_mse']}); CLIP text encoder
  width {config.text_width}, {config.text_layers} layers, {base['text_encoder_parameters']:,} parameters
  ({"pre-trained with the UNet" if config.train_text_encoder else "random, frozen"}; frozen in DPO), vocabulary
  {base['vocabulary']} word tokens; UNet {config.unet_channels}, {base['unet_parameters']:,} parameters, pre-trained by
  `train_text_to_image.py --full{" --train_text_encoder" if config.train_text_encoder else ""}` for
  {pretraining['steps']} steps, batch {config.pretrain_batch_size}, learning rate {config.pretrain_learning_rate}
  (cosine), caption dropout {config.caption_dropout:g}, v-prediction (final loss {pretraining['final_loss']}, {pretraining['seconds']} s).
- Sampling (pairs and evaluation): {config.inference_steps} Euler steps, guidance {config.guidance_scale:g}.
- Time per stage (s, wall clock): {results['timings_s']}; CPU seconds (all processes): {results['cpu_seconds']}.

The cross-validation pipeline (LoRA beside the base UNet) is in `{out / 'cross_validation'}`:

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("{out / 'cross_validation'}")
pipe.load_lora_weights("{out / 'cross_validation'}", weight_name="pytorch_lora_weights.safetensors")
```

![grid](grid.png)
"""
    (out / "report.md").write_text(text)
    shutil.copyfile(out / EVAL_FOLDER / "grid.png", out / "grid.png")


__all__ = ["InstructEngineConfig", "run_instructengine_demo"]
