"""``editforge demo ultraedit-filtering``: UltraEdit's claim in miniature, offline.

UltraEdit (arXiv 2407.05282) scores every generated editing candidate with CLIP, DINOv2 and SSIM
and keeps the ones that pass thresholds. Does metric-filtered data train a better editor than the
same amount of unfiltered data? In the synthetic world:

1. **candidates**: synthetic triplets with controlled imperfections the metrics can see (an "edit"
   that changed nothing, the wrong background colour or style, a bystander moved or recoloured,
   noise / blur / blocky artefacts), each with its ground-truth failure in the manifest; held-out
   perfect edits (another seed) to evaluate; and a third seed's perfect edits, the CLIP encoder's
   training world (never the candidates or the held-out edits);
2. **dataset**: the candidates as a canonical Hub dataset (``build-dataset --format manifest``);
3. **encoder**: a tiny ``transformers.CLIPModel`` (vision and text towers) trained contrastively on
   the third seed's (source image, source caption) and (edited image, target caption) pairs, saved
   with its ``CLIPProcessor``, so ``editforge metrics`` loads it like ``openai/clip-vit-large-patch14``
   (random weights would make the CLIP metrics meaningless); a tiny *random* DINOv2 beside it only
   because ``compute_metrics`` computes ``dinov2_sim`` too: nothing filters on it;
4. **metrics**: ``compute_metrics`` over every candidate (the canonical ``metrics`` column);
5. **filter**: ``filter_dataset`` with thresholds calibrated to the tiny encoder's scale (a value, or
   ``qP``: the P-quantile of that metric over the candidates; UltraEdit's CLIP-L thresholds do not
   transfer to a 100k-parameter encoder); the unfiltered arm is a random subset of the candidates of
   the same size; the filter's precision and recall against the world's ground truth, and the
   share of each failure kind it removed;
6. **base model**: the main demo's tiny InstructPix2Pix (a VAE fitted to the candidates' images, a
   random UNet and text encoder);
7. **training**: the plain InstructPix2Pix baseline (``training/train_reward_pix2pix.py
   --without_rewards``) twice, from the same base, for the same steps, with the same seed, on the
   same number of examples: the filtered set and the random unfiltered subset;
8. **evaluation** through ``editforge eval``'s harness: both models edit the held-out images with
   every seed of ``--eval_seeds``, judged by the oracle; the ideal edits through the VAE as a ceiling;
9. **report**: ``report.md`` (following accuracy with bootstrap intervals and per seed, mean IF / DP /
   GQ, per task, the paired difference, the filter's precision / recall, stage times),
   ``results.json`` and ``grid.png``.

A rerun with the same settings reuses every finished stage (``demo_state.json``, as the main demo);
changing the thresholds refilters and retrains without regenerating, retraining the encoder or
rescoring.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from editforge.demo import CEILING_FOLDER, _stage, _Stages, _vae_ceiling, train_in_processes
from editforge.demo import item_rows as _item_rows
from editforge.training.config import help_field

ENCODER_MAX_TOKENS = 77  # the world's captions are at most about 45 words, one token each


@dataclass
class FilteringConfig:
    """Settings of ``editforge demo ultraedit-filtering`` (each is a ``--flag``)."""

    out: str = help_field("output folder (a rerun with the same settings resumes there)",
                          default="demo_ultraedit_filtering")
    seed: int = help_field("seed of the candidates (held-out edits: seed + 1000; the encoder's world: seed + 2000) "
                           "and of training", default=0)
    size: int = help_field("image side in pixels", default=32)
    candidates: int = help_field("candidate training triplets (the pool both training sets are drawn from)",
                                 default=3000)
    eval_items: int = help_field("held-out edits to evaluate", default=100)
    imperfect: float = help_field("share of candidates with a failure", default=0.7)
    failure_weights: str = help_field("relative odds of the perspective that fails, PERSPECTIVE=WEIGHT,...",
                                      default="instruction_following=0.6,detail_preserving=0.2,generation_quality=0.2")
    instruction_failures: str = help_field("instruction-following failure kinds, comma-separated (empty: all)",
                                           default="no_change,wrong_colour,wrong_style")
    tasks: str = help_field("edit kinds, comma-separated (editforge synth's tasks)", default="background_change,style_change")
    encoder_items: int = help_field("perfect edits of the encoder's world (two image-caption pairs each; a tenth "
                                    "held out to measure it)", default=2000)
    encoder_steps: int = help_field("contrastive training steps of the CLIP-style encoder", default=400)
    encoder_batch_size: int = help_field("edits per encoder batch (each gives its source and its edit)", default=64)
    encoder_width: int = help_field("width of the encoder's towers", default=64)
    encoder_layers: int = help_field("transformer layers of each tower", default=2)
    encoder_patch: int = help_field("vision tower patch size", default=8)
    encoder_learning_rate: float = help_field("peak learning rate of the encoder (cosine)", default=2e-3)
    thresholds: str = help_field("filter: NAME=VALUE or NAME=qP (the P-quantile over the candidates), comma-separated",
                                 default="clip_sim_dir=r0.05,clip_sim_target=r0.05,clip_sim_image=r0.05")
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
    parallel_training: bool = help_field("train both models at once, one process each", default=True)
    grid_rows: int = help_field("held-out edits shown in grid.png", default=12)
    progress: bool = help_field("progress bars", default=True)

    @property
    def task_list(self) -> tuple[str, ...]:
        return tuple(t for t in self.tasks.split(",") if t)


_DATA_KEYS = ("seed", "size", "candidates", "eval_items", "imperfect", "failure_weights", "instruction_failures",
              "tasks", "encoder_items")
_ENCODER_KEYS = _DATA_KEYS + ("encoder_steps", "encoder_batch_size", "encoder_width", "encoder_layers",
                              "encoder_patch", "encoder_learning_rate")
_FILTER_KEYS = _ENCODER_KEYS + ("thresholds",)
_BASE_KEYS = _DATA_KEYS + ("vae_steps", "vae_channels", "unet_channels", "text_width")
_TRAIN_KEYS = _FILTER_KEYS + _BASE_KEYS[len(_DATA_KEYS):] + ("train_steps", "batch_size", "learning_rate")
_EVAL_KEYS = _TRAIN_KEYS + ("eval_seeds", "inference_steps", "guidance_scale", "image_guidance_scale")
EVAL_FOLDER = "eval"
TIMES_FILE = "stage_times.json"
MODELS = ("filtered", "unfiltered")
LABELS = {"filtered": "IP2P on metric-filtered candidates",
          "unfiltered": "IP2P on as many random candidates",
          "vae_ceiling": "ceiling: ideal edits through the VAE"}
FILTER_METRICS = ("clip_sim_source", "clip_sim_target", "clip_sim_dir", "clip_sim_image", "ssim")
PAIRED_RESAMPLES, PAIRED_SEED = 1000, 0


def run_filtering_demo(config: FilteringConfig) -> dict:
    """Run the whole demo into ``config.out``; return the results (also in results.json)."""
    from editforge.commands.arguments import writable_dir

    _check(config)
    out = writable_dir(config.out)
    stages = _Stages(out, config)
    # A stage reused from an earlier run is reported with the time it took then (TIMES_FILE).
    times_path = out / TIMES_FILE
    earlier = json.loads(times_path.read_text()) if times_path.is_file() else {}
    timings: dict[str, float] = {}
    reused: list[str] = []
    total = 9
    started = clock = time.perf_counter()

    def saved(*names):
        return [stages.state.get(name) for name in names]

    def lap(name: str, before=None, after=None):
        nonlocal clock
        now = time.perf_counter()
        # reused: the stage's saved results are the very objects found at the start (a stage that ran put new ones)
        if before is not None and all(b is not None and b is a for b, a in zip(before, after)) and name in earlier:
            timings[name] = earlier[name]
            reused.append(name)
        else:
            timings[name] = round(now - clock, 1)
        times_path.write_text(json.dumps({**earlier, **timings}, indent=1) + "\n")
        clock = now

    before = saved("data")
    _stage(1, total, f"synthetic data: {config.candidates} candidates, {config.eval_items} held-out edits, "
                     f"{config.encoder_items} edits for the encoder")
    data = stages.run("data", _DATA_KEYS, lambda: _make_data(config, out),
                      lambda r: all(Path(p).is_file() for p in r.values()))
    lap("data", before, saved("data"))

    before = saved("dataset")
    _stage(2, total, "building the candidates' Hub dataset")
    dataset = stages.run("dataset", _DATA_KEYS, lambda: _build_dataset(config, out, Path(data["candidates"])),
                         lambda r: (Path(r["folder"]) / "README.md").is_file())
    lap("dataset", before, saved("dataset"))

    before = saved("encoder")
    _stage(3, total, f"training the CLIP-style encoder on the world's images and captions, {config.encoder_steps} steps")
    encoder = stages.run("encoder", _ENCODER_KEYS, lambda: _train_encoder(config, out, Path(data["encoder"])),
                         lambda r: (Path(r["clip"]) / "config.json").is_file()
                         and (Path(r["dinov2"]) / "config.json").is_file())
    lap("encoder", before, saved("encoder"))

    before = saved("metrics")
    _stage(4, total, "scoring every candidate (editforge metrics: CLIP, DINOv2, SSIM)")
    scored = stages.run("metrics", _ENCODER_KEYS,
                        lambda: _score(config, out, Path(dataset["folder"]), encoder, Path(data["encoder"])),
                        lambda r: all((Path(r[k]) / "README.md").is_file() for k in ("folder", "reference_folder")))
    lap("metrics", before, saved("metrics"))

    before = saved("filter")
    _stage(5, total, f"filtering ({config.thresholds}) and drawing as many random candidates")
    filtering = stages.run("filter", _FILTER_KEYS,
                           lambda: _filter(config, out, scored, Path(data["candidates"])),
                           lambda r: all((Path(r[k]["folder"]) / "README.md").is_file() for k in MODELS))
    lap("filter", before, saved("filter"))

    before = saved("base_model")
    _stage(6, total, "tiny InstructPix2Pix base model: fitting a VAE to the images")
    base = stages.run("base_model", _BASE_KEYS, lambda: _make_base_model(config, out, Path(dataset["folder"])),
                      lambda r: (Path(r["folder"]) / "model_index.json").is_file())
    base_dir = Path(base["folder"])
    lap("base_model", before, saved("base_model"))

    before = saved(*MODELS)
    _stage(7, total, f"training the IP2P baseline on the filtered and on the random candidates "
                     f"({filtering['filtered']['examples']} each), {config.train_steps} steps each")
    training = {}
    for name in MODELS:
        training[name] = stages.get(name, _TRAIN_KEYS, lambda r: (Path(r["folder"]) / "model_index.json").is_file())
    pending = [name for name in MODELS if training[name] is None]
    arguments = {name: _train_arguments(config, out, base_dir, Path(filtering[name]["folder"]), name)
                 for name in pending}
    for name, result in train_in_processes(config, out, "editforge.training.train_reward_pix2pix", arguments).items():
        training[name] = result
        stages.put(name, _TRAIN_KEYS, result)
    lap("training", before, saved(*MODELS))

    _stage(8, total, "editing held-out images with both models and judging the edits (editforge eval)")
    # the harness keeps every edit and answer: with the same settings it only reads them back
    same = stages.state.get("evaluation", {}).get("key") == stages._key(_EVAL_KEYS)
    evaluation = _evaluate(config, out, stages, base_dir, Path(data["heldout"]))
    lap("evaluation", [same], [True])

    _stage(9, total, "writing the report")
    results = {
        "config": asdict(config),
        "timings_s": timings,
        "dataset": dataset,
        "encoder": encoder,
        "metrics": scored,
        "filter": filtering,
        "base_model": base,
        "training": training,
        "scores": _scores(evaluation),
        "paired": _paired(_item_rows(out / EVAL_FOLDER), "filtered", "unfiltered", evaluation.groups),
        "ultraedit_thresholds": _preset_check(scored, Path(data["candidates"])),
        "evaluation_folder": str(out / EVAL_FOLDER),
    }
    timings["report"] = round(time.perf_counter() - clock, 1)
    timings["total"] = round(sum(v for k, v in timings.items() if k != "total"), 1)
    results["reused_stages"] = reused
    results["this_run_s"] = round(time.perf_counter() - started, 1)
    _write_report(config, out, results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print((out / "report.md").read_text())
    return results


# -- settings ------------------------------------------------------------------------------------

def _check(config: FilteringConfig) -> None:
    from editforge.dataset_builders.synthetic.edits import TASKS
    from editforge.dataset_builders.synthetic.imperfections import INSTRUCTION_FAILURE_KINDS
    from editforge.errors import UsageError

    unknown = [t for t in config.task_list if t not in TASKS]
    if unknown or not config.task_list:
        raise UsageError(f"--tasks: unknown {unknown} (the world's tasks: {', '.join(TASKS)})")
    kinds = [k for k in config.instruction_failures.split(",") if k]
    if [k for k in kinds if k not in INSTRUCTION_FAILURE_KINDS]:
        raise UsageError(f"--instruction_failures: expected some of {', '.join(INSTRUCTION_FAILURE_KINDS)}")
    _failure_weights(config)
    _threshold_spec(config)


def _failure_weights(config: FilteringConfig) -> dict[str, float]:
    from editforge.errors import UsageError
    from editforge.vocabulary import PERSPECTIVES

    weights = {}
    for part in (p for p in config.failure_weights.split(",") if p):
        name, _, value = part.partition("=")
        if name not in PERSPECTIVES:
            raise UsageError(f"--failure_weights: {name!r} is not one of {', '.join(PERSPECTIVES)}")
        weights[name] = float(value)
    if not weights or sum(weights.values()) <= 0:
        raise UsageError("--failure_weights: give at least one positive weight")
    return weights


def _threshold_spec(config: FilteringConfig) -> dict[str, tuple[str, float]]:
    """``{metric: ("value", v) | ("candidates", p) | ("reference", p)}`` from ``config.thresholds``."""
    from editforge.errors import UsageError

    spec = {}
    for part in (p for p in config.thresholds.split(",") if p):
        name, _, value = part.partition("=")
        if name not in FILTER_METRICS:
            raise UsageError(f"--thresholds: {name!r}; the demo filters on {', '.join(FILTER_METRICS)} "
                             "(its DINOv2 is random: dinov2_sim means nothing here)")
        kind = {"q": "candidates", "r": "reference"}.get(value[:1], "value")
        try:
            spec[name] = (kind, float(value if kind == "value" else value[1:]))
        except ValueError:
            raise UsageError(f"--thresholds: {part!r}: expected NAME=VALUE, NAME=qP or NAME=rP") from None
        if kind != "value" and not 0 <= spec[name][1] <= 1:
            raise UsageError(f"--thresholds: {part!r}: a quantile is between 0 and 1")
    if not spec:
        raise UsageError("--thresholds: give at least one")
    return spec


# -- stages --------------------------------------------------------------------------------------

def _make_data(config: FilteringConfig, out: Path) -> dict:
    from editforge.dataset_builders.synthetic import write_synthetic_dataset

    common = dict(width=config.size, height=config.size, progress=config.progress, tasks=config.task_list)
    kinds = tuple(k for k in config.instruction_failures.split(",") if k) or None
    candidates = write_synthetic_dataset(out / "data" / "candidates", n=config.candidates, seed=config.seed,
                                         imperfect_rate=config.imperfect, failure_weights=_failure_weights(config),
                                         instruction_failure_kinds=kinds, **common)
    heldout = write_synthetic_dataset(out / "data" / "heldout", n=config.eval_items, seed=config.seed + 1_000,
                                      imperfect_rate=0.0, **common)
    encoder = write_synthetic_dataset(out / "data" / "encoder", n=config.encoder_items, seed=config.seed + 2_000,
                                      imperfect_rate=0.0, **common)
    return {"candidates": str(candidates), "heldout": str(heldout), "encoder": str(encoder)}


def _build_dataset(config: FilteringConfig, out: Path, manifest: Path) -> dict:
    from datasets import load_dataset

    from editforge.dataset_builders import build_dataset

    folder = out / "candidates"
    report = build_dataset("manifest", manifest, folder, config="default", split="train",
                           progress=config.progress, on_error="fail")
    dataset = load_dataset(str(folder), "default", split="train")
    return {"folder": str(folder), "examples": len(dataset), "skipped": len(report.skipped)}


def _world_pairs(manifest: Path):
    """The encoder world's (image, caption) pairs: each perfect edit's source with its source caption and
    its edit with its target caption (so every batch holds pairs that differ only by an edit)."""
    from PIL import Image

    from editforge.dataset_builders.manifest import read_manifest

    images, captions = [], []
    for record in read_manifest(manifest):
        for image, caption in (("source_image", "source_caption"), ("ideal_image", "target_caption")):
            images.append(Image.open(manifest.parent / record[image]).convert("RGB"))
            captions.append(record[caption])
    return images, captions


def _train_encoder(config: FilteringConfig, out: Path, manifest: Path) -> dict:
    """A tiny CLIPModel trained contrastively on the encoder world (CLIP's symmetric InfoNCE, learned
    temperature), saved with its CLIPProcessor; and a tiny random DINOv2 (compute_metrics needs one)."""
    import math

    import torch
    from tqdm.auto import tqdm
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from editforge.testing.tiny_encoders import CLIP_MEAN, CLIP_STD, save_tiny_dinov2
    from editforge.testing.tiny_models import build_clip_tokenizer, synthetic_world_words

    start = time.perf_counter()
    images, captions = _world_pairs(manifest)
    tokenizer = build_clip_tokenizer(synthetic_world_words() + captions, model_max_length=ENCODER_MAX_TOKENS)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": config.size}, crop_size={"height": config.size, "width": config.size},
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )
    width = config.encoder_width
    common = dict(hidden_size=width, intermediate_size=2 * width, num_attention_heads=4,
                  num_hidden_layers=config.encoder_layers)
    clip_config = CLIPConfig(
        text_config=dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=len(tokenizer.get_vocab()),
                         max_position_embeddings=ENCODER_MAX_TOKENS, **common),
        vision_config=dict(image_size=config.size, patch_size=config.encoder_patch, num_channels=3, **common),
        projection_dim=width,
    )
    torch.manual_seed(config.seed)
    model = CLIPModel(clip_config)
    pixels = torch.stack(list(image_processor(images=images, return_tensors="pt")["pixel_values"]))
    tokens = tokenizer(captions, padding=True, truncation=True, max_length=ENCODER_MAX_TOKENS, return_tensors="pt")
    items = len(captions) // 2
    held = max(1, items // 10)
    train_items = items - held
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.encoder_learning_rate, weight_decay=0.05)
    warmup = max(1, config.encoder_steps // 10)

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.encoder_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    model.train()
    for _ in tqdm(range(config.encoder_steps), desc="encoder", unit="step", disable=not config.progress):
        chosen = torch.randperm(train_items, generator=generator)[:config.encoder_batch_size]
        rows = torch.cat([2 * chosen, 2 * chosen + 1])  # each edit's source pair and edited pair
        ids, mask = tokens["input_ids"][rows], tokens["attention_mask"][rows]
        length = int(mask.sum(1).max())
        loss = model(input_ids=ids[:, :length], attention_mask=mask[:, :length], pixel_values=pixels[rows],
                     return_loss=True).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    model.eval()
    quality = _encoder_quality(model, pixels, tokens, range(train_items, items))
    folder = out / "encoder" / "clip"
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    dinov2 = save_tiny_dinov2(out / "encoder" / "dinov2_random", image_size=config.size, patch_size=8, seed=config.seed)
    tail = losses[-50:]
    return {"clip": str(folder), "dinov2": str(dinov2), "steps": config.encoder_steps,
            "parameters": sum(p.numel() for p in model.parameters()), "pairs": 2 * train_items,
            "held_out_edits": held, "final_loss": round(sum(tail) / len(tail), 4),
            "seconds": round(time.perf_counter() - start, 1), **quality}


def _encoder_quality(model, pixels, tokens, held) -> dict:
    """How much the encoder knows, on held-out edits of its world: image-to-caption retrieval among all
    held-out captions; whether an edit's image is closer to its target caption than to its source caption
    (and its source image the other way round: the edit is told apart); the mean CLIP direction
    similarity of the ideal edits."""
    import torch
    import torch.nn.functional as F

    rows = torch.tensor([r for i in held for r in (2 * i, 2 * i + 1)])
    with torch.inference_mode():
        ids, mask = tokens["input_ids"][rows], tokens["attention_mask"][rows]
        text = F.normalize(model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)
        image = F.normalize(model.get_image_features(pixel_values=pixels[rows]).pooler_output, dim=-1)
    sims = image @ text.T
    retrieval = float((sims.argmax(1) == torch.arange(len(rows))).float().mean())
    src, edit = torch.arange(0, len(rows), 2), torch.arange(1, len(rows), 2)
    told_apart = (sims[edit, edit] > sims[edit, src]) & (sims[src, src] > sims[src, edit])
    direction = F.cosine_similarity(image[edit] - image[src], text[edit] - text[src], dim=-1)
    return {"retrieval_top1": round(retrieval, 4), "edit_told_apart": round(float(told_apart.float().mean()), 4),
            "ideal_clip_sim_dir": round(float(direction.mean()), 4), "retrieval_candidates": len(rows)}


def _score(config: FilteringConfig, out: Path, dataset_dir: Path, encoder: dict, encoder_manifest: Path) -> dict:
    """``compute_metrics`` over every candidate, and over the reference edits: the encoder world's
    held-out perfect edits (what ``rP`` thresholds are quantiles of)."""
    from editforge.dataset_builders import build_dataset
    from editforge.dataset_builders.manifest import read_manifest, write_manifest
    from editforge.dataset_builders.metrics import compute_metrics

    options = dict(clip_model=encoder["clip"], dinov2_model=encoder["dinov2"], batch_size=128, num_workers=0,
                   progress=config.progress)
    folder = out / "scored"
    report = compute_metrics(dataset_dir, folder, **options)
    records = list(read_manifest(encoder_manifest))
    reference_manifest = encoder_manifest.parent / "reference.jsonl"  # beside the images its paths name
    write_manifest(reference_manifest, records[len(records) - encoder["held_out_edits"]:])
    reference = out / "reference"
    if reference.exists():
        shutil.rmtree(reference)
    build_dataset("manifest", reference_manifest, reference, config="default", split="train",
                  progress=config.progress, on_error="fail")
    reference_report = compute_metrics(reference, out / "scored_reference", **options)
    return {"folder": str(folder), "reference_folder": str(out / "scored_reference"),
            "scored": report.computed + report.resumed, "reference_scored": reference_report.computed
            + reference_report.resumed, "skipped": len(report.skipped), "seconds": round(report.seconds, 1)}


def _ground_truth(manifest: Path) -> dict[str, dict]:
    """Each candidate's ground truth by id: its failure kinds and whether it is flawless."""
    from editforge.dataset_builders.manifest import read_manifest
    from editforge.vocabulary import MAX_REWARD, PERSPECTIVES

    truth = {}
    for record in read_manifest(manifest):
        scores = record["ground_truth"]
        kinds = sorted({":".join(f.split(":")[:2]) for f in record["failures"]})
        truth[record["id"]] = {"task": record["task"], "kinds": kinds,
                               "perfect": all(scores[p]["score"] == MAX_REWARD for p in PERSPECTIVES),
                               "following": scores[PERSPECTIVES[0]]["score"] == MAX_REWARD}
    return truth


def _metric_arrays(data) -> dict:
    import numpy as np

    rows = data["metrics"]
    return {name: np.array([np.nan if m is None or m[name] is None else m[name] for m in rows], dtype=np.float64)
            for name in FILTER_METRICS}


def _resolve_thresholds(config: FilteringConfig, candidates: dict, reference: dict) -> dict[str, float]:
    """Each threshold's value: as given, or a quantile of the metric over the candidates (``qP``) or over
    the reference perfect edits (``rP``)."""
    import numpy as np

    thresholds = {}
    for name, (kind, value) in _threshold_spec(config).items():
        if kind == "value":
            thresholds[name] = value
        else:
            values = (candidates if kind == "candidates" else reference)[name]
            thresholds[name] = round(float(np.quantile(values[~np.isnan(values)], value)), 4)
    return thresholds


def _filter(config: FilteringConfig, out: Path, scored: dict, candidates_manifest: Path) -> dict:
    """The filtered set (``filter_dataset``) and a random subset of the candidates of the same size, each a
    dataset folder; the filter measured against the world's ground truth."""
    import numpy as np

    from editforge.dataset_builders.metrics import filter_dataset
    from editforge.dataset_builders.metrics.dataset_io import load_edit_dataset

    scored_dir = Path(scored["folder"])
    data = load_edit_dataset(scored_dir)
    ids = data["id"]
    metrics = _metric_arrays(data)
    reference = _metric_arrays(load_edit_dataset(scored["reference_folder"]))
    thresholds = _resolve_thresholds(config, metrics, reference)
    folder = out / "training_sets" / "filtered"  # (out / NAME is the model trained on it)
    if folder.exists():
        shutil.rmtree(folder)  # other thresholds than the folder's
    report = filter_dataset(scored_dir, folder, thresholds=thresholds, progress=config.progress)
    kept_ids = set(load_edit_dataset(folder)["id"])
    rng = np.random.default_rng(config.seed)
    random_indices = sorted(int(i) for i in rng.choice(len(ids), size=len(kept_ids), replace=False))
    random_folder = _write_subset(config, out / "training_sets" / "unfiltered", scored_dir, random_indices)
    truth = _ground_truth(candidates_manifest)
    chosen = {"filtered": kept_ids, "unfiltered": {ids[i] for i in random_indices}}
    composition = {name: _composition(truth, kept) for name, kept in chosen.items()}
    composition["candidates"] = _composition(truth, set(ids))
    return {
        "thresholds": thresholds, "threshold_spec": config.thresholds, "below": report.below,
        "filtered": {"folder": str(folder), "examples": report.num_kept, **_filter_quality(truth, kept_ids)},
        "unfiltered": {"folder": str(random_folder), "examples": len(random_indices)},
        "composition": composition,
        "metric_means": _metric_means(truth, ids, metrics),
        "reference_means": {name: round(float(np.nanmean(v)), 4) for name, v in reference.items()},
        "reference_q05": {name: round(float(np.nanquantile(v, 0.05)), 4) for name, v in reference.items()},
    }


def _preset_check(scored: dict, candidates_manifest: Path) -> dict:
    """What UltraEdit's own free-form thresholds (made for CLIP ViT-L/14; without the DINOv2 one, whose
    encoder is random here) would keep of the candidates, by ``editforge filter``'s selection code."""
    import numpy as np

    from editforge.dataset_builders.metrics.dataset_io import load_edit_dataset
    from editforge.dataset_builders.metrics.filtering import PRESETS, select_rows

    data = load_edit_dataset(scored["folder"])
    thresholds = {k: v for k, v in PRESETS["ultraedit-free-form"].items() if k != "dinov2_sim"}
    metrics = {k: v.astype(np.float32) for k, v in _metric_arrays(data).items()}
    kept, _ = select_rows(metrics, thresholds)
    ids = data["id"]
    return {"thresholds": thresholds, "examples": len(kept),
            **_filter_quality(_ground_truth(candidates_manifest), {ids[i] for i in kept})}


def _write_subset(config: FilteringConfig, folder: Path, scored_dir: Path, indices: list[int]) -> Path:
    """Rows ``indices`` of the scored candidates as a dataset folder, through the same writer as
    ``editforge filter`` (its card says it is a random subset)."""
    from editforge.dataset_builders.metrics.card import add_metrics, histograms
    from editforge.dataset_builders.metrics.dataset_io import load_edit_dataset, publish_rows

    if folder.exists():
        shutil.rmtree(folder)
    data = load_edit_dataset(scored_dir)
    subset = data.select(indices)

    def section() -> dict:
        before, after = histograms(), histograms()
        for m in data["metrics"]:
            add_metrics(before, m)
        for m in subset["metrics"]:
            add_metrics(after, m)
        return {"kind": "filter", "source": f"{scored_dir.name} (a uniformly random subset, seed {config.seed})",
                "preset": None, "thresholds": {}, "top_k": None, "top_k_by": None, "group_by": None,
                "num_input": len(data), "num_kept": len(subset), "below": {}, "nulls": {}, "dropped_for_null": 0,
                "dropped_by_top_k": 0, "kept_per_task": dict(Counter(subset["task"])),
                "input_per_task": dict(Counter(data["task"])),
                "input_histograms": {k: h.to_dict() for k, h in before.items()},
                "histograms": {k: h.to_dict() for k, h in after.items()}}

    publish_rows(folder, config="default", split="train", kind="filter", rows=lambda skip: iter(subset.select(
        range(skip, len(subset)))), total=len(subset), signature={"source": str(scored_dir), "indices": indices},
        section=section, progress=config.progress)
    return folder


def _composition(truth: dict, ids) -> dict:
    items = [truth[i] for i in ids]
    n = max(1, len(items))
    return {"examples": len(items), "perfect": round(sum(t["perfect"] for t in items) / n, 4),
            "following": round(sum(t["following"] for t in items) / n, 4),
            "kinds": dict(sorted(Counter(k for t in items for k in t["kinds"]).items()))}


def _filter_quality(truth: dict, kept: set) -> dict:
    """Precision / recall of the filter as a detector of flawless candidates, and of instruction-following
    ones; the share of each failure kind it removed."""
    def pr(label):
        positives = {i for i, t in truth.items() if t[label]}
        hits = len(positives & kept)
        return {"precision": round(hits / max(1, len(kept)), 4), "recall": round(hits / max(1, len(positives)), 4)}

    kinds = Counter(k for t in truth.values() for k in t["kinds"])
    kept_kinds = Counter(k for i in kept for k in truth[i]["kinds"])
    clean = [i for i, t in truth.items() if not t["kinds"]]
    removed = {k: round(1 - kept_kinds[k] / n, 4) for k, n in sorted(kinds.items())}
    removed["(no failure)"] = round(1 - sum(i in kept for i in clean) / max(1, len(clean)), 4)
    return {"perfect": pr("perfect"), "following": pr("following"), "removed_share": removed,
            "failure_counts": dict(sorted(kinds.items())), "clean_candidates": len(clean)}


def _metric_means(truth: dict, ids: list, metrics: dict) -> dict:
    """Mean of each metric per ground-truth failure kind (one kind per candidate: the first; "none")."""
    import numpy as np

    groups: dict[str, list[int]] = {}
    for index, item in enumerate(ids):
        kinds = truth[item]["kinds"]
        groups.setdefault(kinds[0] if len(kinds) == 1 else ("none" if not kinds else "several"), []).append(index)
    return {group: {"count": len(idx), **{name: round(float(np.nanmean(metrics[name][idx])), 4)
                                          for name in FILTER_METRICS}}
            for group, idx in sorted(groups.items())}


def _make_base_model(config: FilteringConfig, out: Path, dataset_dir: Path) -> dict:
    from editforge.demo import _make_base_model as make

    return make(config, out, dataset_dir)


def _train_arguments(config: FilteringConfig, out: Path, base_dir: Path, dataset_dir: Path, name: str) -> list[str]:
    from editforge.demo import _train_arguments as arguments

    return arguments(config, out, base_dir, dataset_dir, name, rewards=False)


def _evaluate(config: FilteringConfig, out: Path, stages: _Stages, base_dir: Path, heldout_manifest: Path):
    from editforge.evaluation import ModelSpec, evaluate

    folder = out / EVAL_FOLDER
    if stages.get("evaluation", _EVAL_KEYS) is None and folder.exists():
        shutil.rmtree(folder)  # run with other models or settings: its edits and answers are not these
    stages.put("evaluation", _EVAL_KEYS, {"folder": str(folder)})
    ceiling = _vae_ceiling(out, base_dir, heldout_manifest)
    asked = {"num_inference_steps": config.inference_steps, "guidance_scale": config.guidance_scale,
             "image_guidance_scale": config.image_guidance_scale}
    models = [ModelSpec(name, str(out / name), asked) for name in MODELS]
    models.append(ModelSpec("vae_ceiling", f"outputs:{ceiling}"))
    return evaluate(models, str(heldout_manifest), folder, judge="oracle", seeds=config.eval_seeds, batch_size=25,
                    progress=config.progress, grid_rows=config.grid_rows, trust_remote_code=True)


# -- results -------------------------------------------------------------------------------------

def _scores(evaluation) -> dict:
    scores = {}
    for name, model in evaluation.models.items():
        groups = model["subsets"]["all"]
        overall = groups["all"]
        following = overall["figures"]["following_accuracy"]
        scores[name] = {"items": overall["items"], "rows": overall["rows"], "judged": overall["judged"],
                        "missing": overall["missing"],
                        **{figure: values["value"] for figure, values in overall["figures"].items()},
                        "per_seed_following_accuracy": following["per_seed"],
                        "following_accuracy_ci95": following["ci95"],
                        "per_task": {task: {"following_accuracy": g["figures"]["following_accuracy"]["value"],
                                            "mean_detail_preserving": g["figures"]["mean_detail_preserving"]["value"],
                                            "mean_generation_quality": g["figures"]["mean_generation_quality"]["value"],
                                            "rows": g["rows"]}
                                     for task, g in groups.items() if task != "all"}}
    return scores


def _paired(rows: list[dict], a: str, b: str, groups) -> dict:
    """Model ``a`` minus model ``b`` on the same (item, seed) edits, with a paired bootstrap over items
    (every seed of an item resampled together): following accuracy, mean IF, DP, GQ; overall and per task."""
    import numpy as np

    from editforge.vocabulary import MAX_REWARD, PERSPECTIVES

    by_model: dict[str, dict] = {a: {}, b: {}}
    for row in rows:
        if row["model"] in by_model and row.get("metrics") is not None:
            by_model[row["model"]][(row["item"], row["seed"])] = row
    keys = sorted(set(by_model[a]) & set(by_model[b]))
    figures = ("following_accuracy",) + tuple(f"mean_{p}" for p in PERSPECTIVES)

    def compare(chosen):
        items = sorted({item for item, _ in chosen})
        index = {item: i for i, item in enumerate(items)}
        sums = np.zeros((len(items), len(figures) + 1))  # per item: differences summed over seeds, rows
        for key in chosen:
            ma, mb = by_model[a][key]["metrics"], by_model[b][key]["metrics"]
            diff = [float(ma[PERSPECTIVES[0]] == MAX_REWARD) - float(mb[PERSPECTIVES[0]] == MAX_REWARD)]
            diff += [ma[p] - mb[p] for p in PERSPECTIVES]
            sums[index[key[0]]] += diff + [1]

        def stats(s):
            total = s.sum(axis=0)
            return {f: (total[k] / total[-1] if total[-1] else None) for k, f in enumerate(figures)}

        result = {**stats(sums), "rows": int(sums[:, -1].sum()) if len(items) else 0}
        if len(items) > 1:
            rng = np.random.default_rng(PAIRED_SEED)
            draws = [stats(sums[rng.integers(0, len(items), len(items))]) for _ in range(PAIRED_RESAMPLES)]
            for f in figures:
                result[f"{f}_ci95"] = [round(float(np.percentile([d[f] for d in draws], q)), 4) for q in (2.5, 97.5)]
        return {k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in result.items()}

    tasks = sorted({by_model[a][k]["task"] for k in keys})
    return {"models": [a, b], "all": compare(keys),
            "per_task": {t: compare([k for k in keys if by_model[a][k]["task"] == t]) for t in groups if t in tasks}}


def _write_report(config: FilteringConfig, out: Path, results: dict) -> None:
    scores, paired, flt, enc = results["scores"], results["paired"], results["filter"], results["encoder"]
    training, timings, preset = results["training"], results["timings_s"], results["ultraedit_thresholds"]
    reused_note = (f" (reused from an earlier run, with the time they took then: {', '.join(results['reused_stages'])};"
                   f" this run {results['this_run_s']} s)" if results["reused_stages"] else "")

    def percent(value):
        return "-" if value is None else f"{100 * value:.1f}"

    def number(value):
        return "-" if value is None else f"{value:.2f}"

    def row(name):
        s = scores[name]
        per_seed = ", ".join(percent(v) for v in s["per_seed_following_accuracy"].values())
        ci = s["following_accuracy_ci95"]
        interval = f" [{percent(ci[0])}, {percent(ci[1])}]" if ci else ""
        return (f"| {LABELS[name]} | **{percent(s['following_accuracy'])}%**{interval} ({per_seed}) | "
                f"{number(s['mean_instruction_following'])} | {number(s['mean_detail_preserving'])} | "
                f"{number(s['mean_generation_quality'])} | {percent(s['not_edited'])}% | {s['judged']}/{s['rows']} |")

    table = "\n".join(row(name) for name in scores)
    p = paired["all"]

    def diff(figure, scale=1.0, unit=""):
        value, ci = p.get(figure), p.get(f"{figure}_ci95")
        if value is None:
            return "-"
        text = f"{scale * value:+.1f}{unit}" if scale != 1 else f"{value:+.2f}"
        return text + (f" [{scale * ci[0]:+.1f}, {scale * ci[1]:+.1f}]" if ci and scale != 1
                       else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")

    filtered, unfiltered = scores["filtered"], scores["unfiltered"]
    gain = 100 * ((filtered["following_accuracy"] or 0) - (unfiltered["following_accuracy"] or 0))
    ci = p.get("following_accuracy_ci95")
    significant = ci is not None and ci[0] > 0
    verdict = (f"Training on metric-filtered candidates **raises** instruction-following accuracy by {gain:.1f} points "
               f"over as many random candidates" + (" (the paired 95% interval excludes 0)." if significant
                                                    else " (the paired 95% interval includes 0).")
               if gain > 0 else
               f"Training on metric-filtered candidates does **not** beat as many random candidates here "
               f"({gain:+.1f} points).")
    tasks = [t for t in paired["per_task"]]
    task_rows = "\n".join(
        f"| {t} | {filtered['per_task'][t]['rows']} | {percent(unfiltered['per_task'][t]['following_accuracy'])}% | "
        f"{percent(filtered['per_task'][t]['following_accuracy'])}% | "
        f"{number(unfiltered['per_task'][t]['mean_detail_preserving'])} -> "
        f"{number(filtered['per_task'][t]['mean_detail_preserving'])} | "
        f"{number(unfiltered['per_task'][t]['mean_generation_quality'])} -> "
        f"{number(filtered['per_task'][t]['mean_generation_quality'])} |" for t in tasks)
    quality = flt["filtered"]
    candidates = flt["composition"]["candidates"]["examples"]
    removed = {**flt["filtered"]["removed_share"],
               "(all candidates)": 1 - flt["filtered"]["examples"] / max(1, candidates)}
    counts = flt["filtered"]["failure_counts"]
    kind_counts = {"(no failure)": quality["clean_candidates"], "(all candidates)": candidates}
    removed_rows = "\n".join(
        f"| {kind} | {kind_counts.get(kind, counts.get(kind))} | {percent(share)}% |" for kind, share in removed.items())
    comp = flt["composition"]
    means = flt["metric_means"]
    mean_rows = "\n".join(f"| {group} | {m['count']} | " + " | ".join(number(m[n]) for n in FILTER_METRICS) + " |"
                          for group, m in means.items())
    thresholds = ", ".join(f"`{k}` >= {v:g}" for k, v in flt["thresholds"].items())
    text = f"""# editforge demo ultraedit-filtering: UltraEdit's metric filtering, in miniature

{verdict}

| model (IP2P baseline, {flt['filtered']['examples']} training examples each) | following accuracy (IF = 5) [95% interval] (per eval seed) | mean IF | mean DP | mean GQ | not edited (IF = 0) | judged |
|---|---|---|---|---|---|---|
{table}

Paired (filtered minus unfiltered, the same held-out edits and sampling seeds; bootstrap over items,
{PAIRED_RESAMPLES} resamples): following accuracy {diff('following_accuracy', 100, ' points')}; mean IF
{diff('mean_instruction_following')}, mean DP {diff('mean_detail_preserving')}, mean GQ
{diff('mean_generation_quality')}.

Scores are the oracle judge's (0..5: instruction following IF, detail preserving DP, generation
quality GQ) through `editforge eval`'s harness (its run: `{EVAL_FOLDER}/`). Following accuracy is the
share of edits with IF = 5; the interval is a bootstrap over held-out items.

Per task (following accuracy; mean DP and GQ, unfiltered -> filtered):

| task | rows | unfiltered | filtered | DP | GQ |
|---|---|---|---|---|---|
{task_rows}

## The filter

Thresholds `{config.thresholds}` (`rP`: the P-quantile of that metric over the {results['metrics']['reference_scored']}
reference edits, the encoder world's held-out perfect edits, so `r0.05` keeps about 95% of good edits per
metric, as UltraEdit's thresholds are meant to; `qP`: the P-quantile over the {comp['candidates']['examples']}
candidates; no candidate's ground truth is used): {thresholds}. Kept {flt['filtered']['examples']} of
{comp['candidates']['examples']} candidates (a candidate is kept when every value is at least its threshold;
failing each threshold: {', '.join(f'`{k}` {v}' for k, v in flt['below'].items())}). `dinov2_sim` is computed
(by a tiny *random* DINOv2, only because `editforge metrics` computes it) and never filtered on; SSIM is
recorded (as UltraEdit does) and filtered on only if `--thresholds` names it. UltraEdit's own free-form
thresholds (for CLIP ViT-L/14: {', '.join(f'`{k}` >= {v:g}' for k, v in preset['thresholds'].items())}; DINOv2's
left out) would keep {preset['examples']} candidates here, {percent(preset['perfect']['precision'])}% flawless and
{percent(preset['following']['precision'])}% following (recall of flawless ones {percent(preset['perfect']['recall'])}%):
the scale of a {enc['parameters']:,}-parameter encoder is not CLIP-L's.

Against the world's ground truth: as a detector of flawless candidates (IF = DP = GQ = 5) precision
{percent(quality['perfect']['precision'])}%, recall {percent(quality['perfect']['recall'])}%; of candidates that
follow their instruction (IF = 5) precision {percent(quality['following']['precision'])}%, recall
{percent(quality['following']['recall'])}%. The training sets: filtered {percent(comp['filtered']['perfect'])}% flawless,
{percent(comp['filtered']['following'])}% following; random {percent(comp['unfiltered']['perfect'])}% flawless,
{percent(comp['unfiltered']['following'])}% following (all candidates: {percent(comp['candidates']['perfect'])}%,
{percent(comp['candidates']['following'])}%).

| ground-truth failure (a candidate may have two) | candidates | removed by the filter |
|---|---|---|
{removed_rows}

A failure kind the metrics cannot see is removed at about the rate of all candidates (last row): only
through the failures it comes with.

Mean metric per ground-truth failure (candidates with exactly one failure; "none": flawless by construction):

| failure | candidates | {' | '.join(FILTER_METRICS)} |
|---|---|{'---|' * len(FILTER_METRICS)}
{mean_rows}

## The encoder

A `transformers.CLIPModel` ({enc['parameters']:,} parameters; towers {config.encoder_width} wide, {config.encoder_layers} layers,
patch {config.encoder_patch}) trained for {enc['steps']} steps (CLIP's contrastive loss, batches of
{config.encoder_batch_size} edits = {2 * config.encoder_batch_size} pairs: each edit's source with its source caption and
its edit with its target caption) on {enc['pairs']} pairs of a third seed's perfect edits (never the
candidates or the held-out edits); final loss {enc['final_loss']}. On {enc['held_out_edits']} held-out edits of that world:
image-to-caption top-1 retrieval {percent(enc['retrieval_top1'])}% among {enc['retrieval_candidates']} captions, edit
told apart from its source (each image nearer its own caption) {percent(enc['edit_told_apart'])}%, mean
`clip_sim_dir` of the ideal edits {enc['ideal_clip_sim_dir']}.

## Setup

- Seeds: candidates {config.seed}, held-out {config.seed + 1000}, encoder world {config.seed + 2000}, training
  {config.seed}, random subset {config.seed}, evaluation sampling {config.eval_seeds}.
- Candidates: {config.candidates} at {config.size}x{config.size} ({config.tasks}), imperfect rate {config.imperfect},
  failing perspective odds {config.failure_weights}, instruction failures {config.instruction_failures}.
- Base model: VAE fitted for {results['base_model']['steps']} steps (MSE {results['base_model']['final_mse']});
  UNet {results['base_model']['unet_parameters']:,} parameters, text encoder
  {results['base_model']['text_encoder_parameters']:,}, both trained.
- Training: `train_reward_pix2pix.py --without_rewards`, {config.train_steps} steps, batch {config.batch_size},
  learning rate {config.learning_rate} (cosine); filtered {training['filtered']['seconds']} s (final loss
  {training['filtered']['final_loss']}), unfiltered {training['unfiltered']['seconds']} s (final loss
  {training['unfiltered']['final_loss']}).
- Evaluation: {config.eval_items} held-out perfect edits x {len(config.eval_seeds.split(','))} seeds,
  {config.inference_steps} Euler-ancestral steps, text guidance {config.guidance_scale}, image guidance
  {config.image_guidance_scale}.
- Time per stage (s): {timings}{reused_note}.

![grid](grid.png)
"""
    (out / "report.md").write_text(text)
    shutil.copyfile(out / EVAL_FOLDER / "grid.png", out / "grid.png")
