"""``editforge demo region-masks``: UltraEdit's region masks in miniature, offline.

Does conditioning an SD3 InstructPix2Pix model on the region to edit (UltraEdit's 48-channel model:
noisy, source and mask latents) preserve the rest of the image better than the same model trained
free-form (32 channels: noisy and source latents)? On local edits of the synthetic world
(attribute change, object removal, object addition, object swap):

1. synthetic triplets of local edits, each with its region mask (white = the region to edit);
2. the Hub dataset built from them (``build-dataset --format manifest``);
3. a tiny SD3-shaped text-to-image base: a VAE fitted to the world's images (and masks), two tiny
   CLIP text encoders (no T5, as SD3 allows), a random ``SD3Transformer2DModel``, SD3's flow-matching
   scheduler;
4. two models trained by ``training/train_sd3_pix2pix.py`` from that base, on the same data, for the
   same steps, with the same seed: one ``--with_mask`` (the patch embedding widened to 3x the latent
   channels), one free-form (2x);
5. both asked to edit held-out local edits through ``editforge eval``'s harness (which gives each
   item's region mask to the mask model and none to the other), with every sampling seed of
   ``--eval_seeds``, judged by the oracle; the ideal edits through the VAE as a ceiling;
6. a report: following accuracy, mean detail preserving (DP), DP when instruction following is 5, DP
   on the edits both models made (the fair comparison at equal following), per task, with bootstrap
   intervals; ``report.md``, ``grid.png`` and ``results.json``.

A rerun with the same settings reuses every finished stage (``demo_state.json``, as the main demo).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from editforge.demo import (
    CEILING_FOLDER,
    TOKENS,
    _stage,
    _Stages,
    _vae_ceiling,
    dataset_pixels,
    fit_vae,
    train_in_processes,
)
from editforge.demo import StageClock
from editforge.demo import item_rows as _item_rows
from editforge.training.config import help_field

LOCAL_EDITS = "attribute_change,object_removal,object_addition,object_swap"


@dataclass
class RegionMasksConfig:
    """Settings of ``editforge demo region-masks`` (each is a ``--flag``)."""

    out: str = help_field("output folder (a rerun with the same settings resumes there)", default="demo_region_masks")
    seed: int = help_field("seed of the data (held-out data: seed + 1000) and of training", default=0)
    size: int = help_field("image side in pixels", default=32)
    train_items: int = help_field("training triplets", default=2000)
    eval_items: int = help_field("held-out edits to evaluate", default=300)
    imperfect: float = help_field("share of training triplets with a failure (editforge synth's)", default=0.0)
    tasks: str = help_field("edit kinds, comma-separated: local ones (each has a region mask)", default=LOCAL_EDITS)
    vae_steps: int = help_field("steps fitting the base model's VAE to the images and masks", default=600)
    vae_channels: str = help_field("VAE block widths (each block after the first halves the side)", default="32,64")
    latent_channels: int = help_field("VAE latent channels (SD3: 16)", default=4)
    layers: int = help_field("transformer joint blocks", default=4)
    heads: int = help_field("transformer attention heads", default=4)
    head_dim: int = help_field("width of each attention head", default=16)
    patch_size: int = help_field("transformer patch size (latent pixels per token side)", default=2)
    text_width: int = help_field("width of each of the two CLIP text encoders (random at the start)", default=32)
    train_text_encoder: bool = help_field("train the text encoders with each model (else they stay random and frozen)",
                                          default=True)
    shift: float = help_field("flow-matching timestep shift of the scheduler (SD3: 3.0)", default=3.0)
    max_sequence_length: int = help_field("T5 tokens of each prompt, zeros without T5 (SD3's pipeline: 256), in training "
                                          "and sampling; 1: the text is read from the CLIP tokens (4.5x faster than "
                                          "256, the same result at 1000 steps here)", default=1)
    train_steps: int = help_field("training steps of each model", default=3000)
    batch_size: int = help_field("training batch size", default=32)
    learning_rate: float = help_field("peak learning rate (cosine schedule)", default=1e-3)
    conditioning_dropout: float = help_field("conditioning dropout of text, image (+ mask), both; each", default=0.05)
    eval_seeds: str = help_field("sampling seeds of the evaluation, comma-separated", default="0,1")
    inference_steps: int = help_field("denoising steps per edit", default=20)
    guidance_scale: float = help_field("text guidance of the edits", default=3.0)
    image_guidance_scale: float = help_field("image guidance of the edits", default=1.5)
    parallel_training: bool = help_field("train both models at once, one process each", default=True)
    grid_rows: int = help_field("held-out edits shown in grid.png", default=12)
    progress: bool = help_field("progress bars", default=True)

    @property
    def task_list(self) -> tuple[str, ...]:
        return tuple(t for t in self.tasks.split(",") if t)


_DATA_KEYS = ("seed", "size", "train_items", "imperfect", "tasks")
_HELDOUT_KEYS = ("seed", "size", "eval_items", "tasks")  # held-out edits: changing them retrains nothing
_VAE_KEYS = _DATA_KEYS + ("vae_steps", "vae_channels", "latent_channels")
# the rest of the base is cheap to build: changing it keeps the fitted VAE
_BASE_KEYS = _VAE_KEYS + ("layers", "heads", "head_dim", "patch_size", "text_width", "shift")
_TRAIN_KEYS = _BASE_KEYS + ("train_steps", "batch_size", "learning_rate", "conditioning_dropout", "train_text_encoder",
                            "max_sequence_length")
_EVAL_KEYS = _TRAIN_KEYS + ("eval_items", "eval_seeds", "inference_steps", "guidance_scale", "image_guidance_scale")
EVAL_FOLDER = "eval"
MODELS = {"free_form": False, "mask": True}  # name -> trained --with_mask
LABELS = {"free_form": "free-form ({two} channels: noisy, source)",
          "mask": "mask-conditioned ({three} channels: noisy, source, mask)",
          "vae_ceiling": "ceiling: ideal edits through the VAE"}
PAIRED_RESAMPLES, PAIRED_SEED = 1000, 0


def run_region_masks_demo(config: RegionMasksConfig) -> dict:
    """Run the whole demo into ``config.out``; return the results (also in results.json)."""
    from editforge.commands.arguments import writable_dir
    from editforge.errors import UsageError
    from editforge.dataset_builders.synthetic.edits import LOCAL_TASKS, TASKS

    unknown = [t for t in config.task_list if t not in TASKS]
    if unknown or not config.task_list:
        raise UsageError(f"--tasks: unknown {unknown} (the world's tasks: {', '.join(TASKS)})")
    not_local = [t for t in config.task_list if t not in LOCAL_TASKS]
    if not_local:
        raise UsageError(f"--tasks: {', '.join(not_local)} is global (no region mask); local edits: "
                         f"{', '.join(LOCAL_TASKS)}")
    out = writable_dir(config.out)
    stages = _Stages(out, config)
    clock = StageClock()
    timings, cpu_timings, lap = clock.wall, clock.cpu, clock.lap
    total = 6

    _stage(1, total, f"synthetic local edits with region masks: {config.train_items} training triplets, "
                     f"{config.eval_items} held-out edits")
    data = stages.run("data", _DATA_KEYS, lambda: _make_data(config, out, "train"), lambda r: Path(r).is_file())
    heldout = stages.run("heldout", _HELDOUT_KEYS, lambda: _make_data(config, out, "heldout"),
                         lambda r: Path(r).is_file())
    train_manifest, heldout_manifest = Path(data), Path(heldout)
    lap("data")

    _stage(2, total, "building the Hub dataset")
    dataset_stats = stages.run("dataset", _DATA_KEYS, lambda: _build_dataset(config, out, train_manifest),
                               lambda r: (Path(r["folder"]) / "README.md").is_file())
    dataset_dir = Path(dataset_stats["folder"])
    lap("dataset")

    _stage(3, total, "tiny SD3 text-to-image base: fitting a VAE to the images and masks")
    vae = stages.run("vae", _VAE_KEYS, lambda: _fit_vae(config, out, dataset_dir),
                     lambda r: (Path(r["folder"]) / "config.json").is_file())
    lap("vae")
    base = stages.run("base_model", _BASE_KEYS, lambda: _make_base_model(config, out, dataset_dir, vae),
                      lambda r: (Path(r["folder"]) / "model_index.json").is_file())
    base_dir = Path(base["folder"])
    lap("base_model")

    _stage(4, total, f"training the free-form and the mask-conditioned model, {config.train_steps} steps each")
    training = {}
    for name in MODELS:
        training[name] = stages.get(name, _TRAIN_KEYS, lambda r: (Path(r["folder"]) / "model_index.json").is_file())
    pending = [name for name in MODELS if training[name] is None]
    arguments = {name: _train_arguments(config, out, base_dir, dataset_dir, name) for name in pending}
    for name, result in train_in_processes(config, out, "editforge.training.train_sd3_pix2pix", arguments).items():
        training[name] = result
        stages.put(name, _TRAIN_KEYS, result)
    lap("training")

    _stage(5, total, "editing held-out local edits with both models (the mask model gets each region) and judging")
    evaluation = _evaluate(config, out, stages, base_dir, heldout_manifest)
    lap("evaluation")

    _stage(6, total, "writing the report")
    rows = _item_rows(out / EVAL_FOLDER)
    results = {
        "config": asdict(config),
        "timings_s": timings,
        "cpu_seconds": cpu_timings,
        "dataset": dataset_stats,
        "base_model": base,
        "training": training,
        "scores": _scores(evaluation),
        "paired": _paired(rows, "mask", "free_form", evaluation.groups),
        "evaluation_folder": str(out / EVAL_FOLDER),
        "pipeline_folders": {name: str(out / name) for name in MODELS},
    }
    _write_report(config, out, results, evaluation)
    lap("report")
    clock.total()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print((out / "report.md").read_text())
    return results


def _make_data(config: RegionMasksConfig, out: Path, split: str) -> str:
    """The training triplets (seed ``seed``) or the clean held-out edits (seed ``seed + 1000``): a manifest."""
    from editforge.dataset_builders.synthetic import write_synthetic_dataset

    folder = out / "data" / split
    if folder.exists():
        shutil.rmtree(folder)  # made with other settings
    common = dict(width=config.size, height=config.size, progress=config.progress, tasks=config.task_list)
    if split == "train":
        manifest = write_synthetic_dataset(folder, n=config.train_items, seed=config.seed,
                                           imperfect_rate=config.imperfect, **common)
    else:
        manifest = write_synthetic_dataset(folder, n=config.eval_items, seed=config.seed + 1_000, imperfect_rate=0.0,
                                           **common)
    return str(manifest)


def _build_dataset(config: RegionMasksConfig, out: Path, manifest: Path) -> dict:
    from datasets import load_dataset

    from editforge.dataset_builders import build_dataset

    folder = out / "dataset"
    report = build_dataset("manifest", manifest, folder, config="default", split="train",
                           progress=config.progress, on_error="fail")
    dataset = load_dataset(str(folder), "default", split="train")
    return {"folder": str(folder), "examples": len(dataset),
            "with_mask": sum(m is not None for m in dataset["mask_image"]), "skipped": len(report.skipped)}


def _fit_vae(config: RegionMasksConfig, out: Path, dataset_dir: Path) -> dict:
    """The base's VAE, fitted to the training data's sources, edits and masks (the mask model encodes its
    mask with the same VAE, as UltraEdit does)."""
    from datasets import load_dataset

    dataset = load_dataset(str(dataset_dir), "default", split="train")
    pixels = dataset_pixels(dataset, ("source_image", "edited_image", "mask_image"))
    vae, losses = fit_vae(config, pixels, latent_channels=config.latent_channels)
    # unscaled condition latents (UltraEdit's convention) never use the shift; SD3's decode path reads it
    vae.register_to_config(shift_factor=0.0)
    folder = out / "vae"
    vae.save_pretrained(folder)
    tail = losses[-50:] or [float("nan")]
    return {"folder": str(folder), "vae_steps": config.vae_steps, "vae_images": len(pixels),
            "final_mse": round(sum(tail) / len(tail), 5), "scaling_factor": round(vae.config.scaling_factor, 4)}


def _make_base_model(config: RegionMasksConfig, out: Path, dataset_dir: Path, vae_info: dict) -> dict:
    """A text-to-image ``StableDiffusion3Pipeline`` of tiny components: the fitted VAE, two tiny CLIP text
    encoders (no T5), a random ``SD3Transformer2DModel``, SD3's flow-matching scheduler."""
    import torch
    from datasets import load_dataset
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from editforge.testing.tiny_models import build_clip_tokenizer, synthetic_world_words, tiny_clip_text_encoder

    dataset = load_dataset(str(dataset_dir), "default", split="train")
    vae = AutoencoderKL.from_pretrained(vae_info["folder"])
    downsampling = 2 ** (len(config.vae_channels.split(",")) - 1)
    latent_side = config.size // downsampling
    if latent_side % config.patch_size:
        from editforge.errors import UsageError

        raise UsageError(f"--patch_size {config.patch_size} does not divide the latent side {latent_side}")

    tokenizer = build_clip_tokenizer(synthetic_world_words() + list(dataset["instruction"]), model_max_length=TOKENS)
    encoders = [tiny_clip_text_encoder(len(tokenizer), hidden_size=config.text_width, seed=config.seed + k,
                                       with_projection=True) for k in (0, 1)]
    torch.manual_seed(config.seed)
    transformer = SD3Transformer2DModel(
        sample_size=latent_side,
        patch_size=config.patch_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        num_layers=config.layers,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.heads,
        caption_projection_dim=config.heads * config.head_dim,
        joint_attention_dim=2 * config.text_width,  # the two CLIPs' hidden states side by side
        pooled_projection_dim=2 * config.text_width,
        pos_embed_max_size=2 * latent_side // config.patch_size,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=config.shift), vae=vae,
        text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1], tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None,
    )
    folder = out / "base"
    if folder.exists():
        shutil.rmtree(folder)
    pipe.save_pretrained(folder)
    return {**vae_info, "folder": str(folder), "latent_shape": [config.latent_channels, latent_side, latent_side],
            "image_tokens": (latent_side // config.patch_size) ** 2,
            "transformer_parameters": sum(p.numel() for p in transformer.parameters()),
            "text_encoder_parameters": sum(p.numel() for e in encoders for p in e.parameters())}


def _train_arguments(config: RegionMasksConfig, out: Path, base_dir: Path, dataset_dir: Path, name: str) -> list[str]:
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
        "--conditioning_dropout_prob", str(config.conditioning_dropout),
        "--max_sequence_length", str(config.max_sequence_length),
        "--full", "--cache_latents",
        "--train_text_encoder" if config.train_text_encoder else "--cache_text_embeddings",
        "--checkpointing_steps", "0",
        "--num_validation_images", "0",
        "--no-progress", "--logging_steps", "1",
    ]
    if MODELS[name]:
        argv.append("--with_mask")
    return argv


def _evaluate(config: RegionMasksConfig, out: Path, stages: _Stages, base_dir: Path, heldout_manifest: Path):
    """Both models and the VAE ceiling on the held-out local edits through ``editforge eval``'s harness
    (a manifest folder is a suite; its region masks go to the mask model only), judged by the oracle."""
    from editforge.evaluation import ModelSpec, evaluate

    folder = out / EVAL_FOLDER
    if stages.get("evaluation", _EVAL_KEYS) is None:
        # run with other models, VAE or settings: its edits, answers and ceiling images are not these
        for old in (folder, out / CEILING_FOLDER):
            if old.exists():
                shutil.rmtree(old)
    stages.put("evaluation", _EVAL_KEYS, {"folder": str(folder)})
    ceiling = _vae_ceiling(out, base_dir, heldout_manifest)
    asked = {"num_inference_steps": config.inference_steps, "guidance_scale": config.guidance_scale,
             "image_guidance_scale": config.image_guidance_scale, "max_sequence_length": config.max_sequence_length}
    models = [ModelSpec(name, str(out / name), asked) for name in MODELS]
    models.append(ModelSpec("vae_ceiling", f"outputs:{ceiling}"))
    return evaluate(models, str(heldout_manifest), folder, judge="oracle", seeds=config.eval_seeds,
                    batch_size=25, progress=config.progress, grid_rows=config.grid_rows, trust_remote_code=True)


FIGURES = ("following_accuracy", "mean_instruction_following", "mean_detail_preserving", "dp_when_following",
           "mean_generation_quality", "not_edited")


def _scores(evaluation) -> dict:
    """results.json's ``scores``: each model's figures (value, 95% interval, per seed), overall and per task."""
    scores = {}
    for name, model in evaluation.models.items():
        groups = model["subsets"]["all"]

        def figures(group):
            return {figure: group["figures"][figure] for figure in FIGURES}

        overall = groups["all"]
        scores[name] = {"items": overall["items"], "rows": overall["rows"], "judged": overall["judged"],
                        "missing": overall["missing"], **figures(overall),
                        "per_task": {task: {"rows": g["rows"], **figures(g)} for task, g in groups.items()
                                     if task != "all"}}
    return scores


def _paired(rows: list[dict], a: str, b: str, groups) -> dict:
    """Model ``a`` minus model ``b`` on the same (item, seed) edits, with a paired bootstrap over items
    (every seed of an item resampled together): following accuracy, mean DP, and DP on the edits both
    made (IF = 5 for both: the comparison at equal following). Overall and per task."""
    import numpy as np

    from editforge.vocabulary import MAX_REWARD, PERSPECTIVES

    IF, DP = PERSPECTIVES[0], PERSPECTIVES[1]
    by_model: dict[str, dict] = {a: {}, b: {}}
    for row in rows:
        if row["model"] in by_model and row.get("metrics") is not None:
            by_model[row["model"]][(row["item"], row["seed"])] = row
    keys = sorted(set(by_model[a]) & set(by_model[b]))

    def compare(chosen):
        items = sorted({item for item, _ in chosen})
        index = {item: i for i, item in enumerate(items)}
        # per item sums: [follow a, follow b, dp a, dp b, rows, both followed, dp a both, dp b both]
        sums = np.zeros((len(items), 8))
        for key in chosen:
            ma, mb = by_model[a][key]["metrics"], by_model[b][key]["metrics"]
            fa, fb = ma[IF] == MAX_REWARD, mb[IF] == MAX_REWARD
            both = fa and fb
            sums[index[key[0]]] += [fa, fb, ma[DP], mb[DP], 1, both, ma[DP] * both, mb[DP] * both]

        def stats(s):
            total = s.sum(axis=0)
            rows_, both = total[4], total[5]
            return {"following_accuracy": (total[0] - total[1]) / rows_ if rows_ else None,
                    "mean_detail_preserving": (total[2] - total[3]) / rows_ if rows_ else None,
                    "dp_both_following": (total[6] - total[7]) / both if both else None,
                    "dp_both_following_a": total[6] / both if both else None,
                    "dp_both_following_b": total[7] / both if both else None,
                    "both_following": int(both), "rows": int(rows_)}

        out = stats(sums)
        if len(items) > 1:
            rng = np.random.default_rng(PAIRED_SEED)
            draws = [stats(sums[rng.integers(0, len(items), len(items))]) for _ in range(PAIRED_RESAMPLES)]
            for figure in ("following_accuracy", "mean_detail_preserving", "dp_both_following"):
                values = [d[figure] for d in draws if d[figure] is not None]
                out[f"{figure}_ci95"] = ([round(float(np.percentile(values, 2.5)), 4),
                                          round(float(np.percentile(values, 97.5)), 4)] if values else None)
        return {k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in out.items()}

    result = {"models": [a, b], "all": compare(keys)}
    tasks = {by_model[a][k]["task"] for k in keys}
    result["per_task"] = {task: compare([k for k in keys if by_model[a][k]["task"] == task])
                          for task in groups if task in tasks}
    return result


def _write_report(config: RegionMasksConfig, out: Path, results: dict, evaluation) -> None:
    scores, paired, training, base = results["scores"], results["paired"], results["training"], results["base_model"]
    mask, free = scores["mask"], scores["free_form"]

    def percent(value):
        return "-" if value is None else f"{100 * value:.1f}"

    def number(value):
        return "-" if value is None else f"{value:.2f}"

    def interval(ci, show=number):
        return f" [{show(ci[0])}, {show(ci[1])}]" if ci else ""

    def signed(value, scale=1, unit=""):
        if value is None:
            return "-"
        return f"{value:+.2f}{unit}" if scale == 1 else f"{scale * value:+.1f}{unit}"

    def row(name):
        s = scores[name]
        fa, dp, dpf = s["following_accuracy"], s["mean_detail_preserving"], s["dp_when_following"]
        per_seed = ", ".join(percent(v) for v in fa["per_seed"].values())
        dp_seed = ", ".join(number(v) for v in dp["per_seed"].values())
        label = LABELS[name].format(two=2 * config.latent_channels, three=3 * config.latent_channels)
        return (f"| {label} | **{percent(fa['value'])}%**{interval(fa['ci95'], percent)} ({per_seed}) | "
                f"{number(s['mean_instruction_following']['value'])} | "
                f"**{number(dp['value'])}**{interval(dp['ci95'])} ({dp_seed}) | "
                f"{number(dpf['value'])}{interval(dpf['ci95'])} | {number(s['mean_generation_quality']['value'])} | "
                f"{percent(s['not_edited']['value'])}% | {s['judged']}/{s['rows']} |")

    table = "\n".join(row(name) for name in scores)

    def task_row(task):
        m, f, p = mask["per_task"].get(task), free["per_task"].get(task), paired["per_task"].get(task, {})
        if m is None or f is None:
            return None
        return (f"| {task} | {m['rows']} | {percent(f['following_accuracy']['value'])}% | "
                f"{percent(m['following_accuracy']['value'])}% | {number(f['mean_detail_preserving']['value'])} | "
                f"{number(m['mean_detail_preserving']['value'])} | {number(f['dp_when_following']['value'])} | "
                f"{number(m['dp_when_following']['value'])} | {p.get('both_following', 0)} | "
                f"{number(p.get('dp_both_following_b'))} -> {number(p.get('dp_both_following_a'))} |")

    task_rows = "\n".join(r for r in (task_row(t) for t in evaluation.groups) if r)
    fa_m, fa_f = mask["following_accuracy"], free["following_accuracy"]
    overlap = (fa_m["ci95"] is not None and fa_f["ci95"] is not None
               and fa_m["ci95"][0] <= fa_f["ci95"][1] and fa_f["ci95"][0] <= fa_m["ci95"][1])
    p = paired["all"]
    fa_ci = p.get("following_accuracy_ci95")
    fa_diff_zero = fa_ci is not None and fa_ci[0] <= 0 <= fa_ci[1]
    equal = overlap and fa_diff_zero
    dp_ci = p.get("dp_both_following_ci95")
    if p["dp_both_following"] is None:
        verdict = "No held-out edit was followed (IF = 5) by both models: detail preserving cannot be compared."
    elif dp_ci is not None and dp_ci[0] > 0:
        verdict = (f"The mask-conditioned model **preserves detail better**: on the {p['both_following']} edits "
                   f"both models made (IF = 5), DP {number(p['dp_both_following_b'])} -> "
                   f"{number(p['dp_both_following_a'])} ({signed(p['dp_both_following'])}, paired 95% interval "
                   f"{interval(dp_ci).strip()}).")
    elif dp_ci is not None and dp_ci[1] < 0:
        verdict = (f"The mask-conditioned model preserves detail **worse** here: on the {p['both_following']} edits "
                   f"both models made, DP {number(p['dp_both_following_b'])} -> {number(p['dp_both_following_a'])} "
                   f"({signed(p['dp_both_following'])}, paired 95% interval {interval(dp_ci).strip()}).")
    else:
        verdict = (f"**No measurable difference** in detail preserving: on the {p['both_following']} edits both "
                   f"models made, DP {number(p['dp_both_following_b'])} -> {number(p['dp_both_following_a'])} "
                   f"({signed(p['dp_both_following'])}, paired 95% interval {interval(dp_ci).strip()}).")
    following = (f"Following accuracy is {'**equal** within' if equal else '**not** equal within'} the bootstrap "
                 f"intervals: free-form {percent(fa_f['value'])}%{interval(fa_f['ci95'], percent)}, mask "
                 f"{percent(fa_m['value'])}%{interval(fa_m['ci95'], percent)} (intervals "
                 f"{'overlap' if overlap else 'do not overlap'}; paired difference "
                 f"{signed(p['following_accuracy'], 100, ' points')}, 95% interval "
                 f"{interval(fa_ci, percent).strip() or '-'}).")
    text = f"""# editforge demo region-masks: UltraEdit's region masks in miniature

{verdict} {following}

| model | following accuracy (IF = 5) [95% interval] (per eval seed) | mean IF | mean DP [95%] (per seed) | DP when IF = 5 [95%] | mean GQ | not edited (IF = 0) | judged |
|---|---|---|---|---|---|---|---|
{table}

Paired (mask minus free-form, the same held-out edits and sampling seeds; bootstrap over items):
following accuracy {signed(p['following_accuracy'], 100, ' points')} {interval(fa_ci, percent).strip()},
mean DP {signed(p['mean_detail_preserving'])} {interval(p.get('mean_detail_preserving_ci95')).strip()},
DP on the {p['both_following']} of {p['rows']} edits both models followed {signed(p['dp_both_following'])}
{interval(dp_ci).strip()}.

Scores are the oracle judge's (0..5: instruction following IF, detail preserving DP, generation
quality GQ) by `editforge eval`'s harness (its run is in `{EVAL_FOLDER}/`: every edit, every answer in
`items.jsonl`, its own `report.md`). The harness gives each held-out item's region mask to the mask
model and none to the free-form one. DP counts what changed outside the edit (another shape gone,
added, recoloured, reshaped or moved; the background; a global restyle). An edit that was not made
keeps every detail, so a model that edits less scores higher on mean DP; "DP when IF = 5" compares
the edits each model made, and the paired "both followed" figure compares the same edits made by
both: the comparison at equal following.

Per task (all eval seeds):

| task | rows | following: free-form | following: mask | mean DP: free-form | mean DP: mask | DP when IF = 5: free-form | DP when IF = 5: mask | both followed | DP both followed: free-form -> mask |
|---|---|---|---|---|---|---|---|---|---|
{task_rows}

## Setup

- Seeds: data {config.seed}, held-out {config.seed + 1000}, training {config.seed}, evaluation sampling {config.eval_seeds}.
- Data: {results["dataset"]["examples"]} synthetic local edits at {config.size}x{config.size} ({config.tasks}), each with its
  region mask ({results["dataset"]["with_mask"]} masks), imperfect rate {config.imperfect}; held-out:
  {config.eval_items} clean edits.
- Base model (SD3-shaped, text-to-image, random but for the VAE): VAE {config.vae_channels} fitted for
  {base["vae_steps"]} steps on {base["vae_images"]} images (sources, edits, masks; MSE {base["final_mse"]}),
  latents {"x".join(map(str, base["latent_shape"]))}; `SD3Transformer2DModel` {config.layers} joint blocks,
  {config.heads} heads of {config.head_dim}, patch {config.patch_size} ({base["image_tokens"]} image tokens),
  {base["transformer_parameters"]:,} parameters; two CLIP text encoders of width {config.text_width}
  ({base["text_encoder_parameters"]:,} parameters, {"trained with each model" if config.train_text_encoder else "frozen"}), no T5 ({config.max_sequence_length} zero tokens in its place, in training
  and sampling); flow matching, shift {config.shift}.
- Training (`training/train_sd3_pix2pix.py --full`, same data, base, seed and steps): {config.train_steps} steps,
  batch {config.batch_size}, learning rate {config.learning_rate} (cosine), conditioning dropout
  {config.conditioning_dropout}; free-form {training["free_form"]["seconds"]} s (final loss
  {training["free_form"]["final_loss"]}), mask {training["mask"]["seconds"]} s (final loss {training["mask"]["final_loss"]}).
- Evaluation: {config.eval_items} held-out edits x {len(config.eval_seeds.split(","))} seeds, {config.inference_steps}
  flow-matching Euler steps, text guidance {config.guidance_scale}, image guidance {config.image_guidance_scale}.
- Time per stage (s, wall clock): {results["timings_s"]}; CPU seconds (all processes, both cores):
  {results["cpu_seconds"]}.

The mask-conditioned pipeline is in `{out / "mask"}`:

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("{out / "mask"}", trust_remote_code=True)
edited = pipe(prompt, image=source, mask_image=mask).images[0]  # mask: white = the region to edit
```

![grid](grid.png)
"""
    (out / "report.md").write_text(text)
    shutil.copyfile(out / EVAL_FOLDER / "grid.png", out / "grid.png")


__all__ = ["RegionMasksConfig", "run_region_masks_demo", "CEILING_FOLDER"]
