"""UltraEdit's quality metrics of a run's edits (``--metrics``), beside the judge's answers.

Every edit of a run gets the six values of :mod:`editforge.dataset_builders.metrics` (the same
encoders and :func:`~editforge.dataset_builders.metrics.score_batch` as ``editforge metrics``): CLIP
similarities to the captions and of the direction, CLIP and DINOv2 similarity of source and edit,
SSIM. They go into the edit's line of ``items.jsonl`` (``quality``, with the models that computed
them) and are reported as means per task group. Caption metrics need the suite's captions
(``source_caption`` / ``target_caption``: Emu Edit, the synthetic world); without them they are null,
never made up. An edit of another size than its source is resized to the source's size (bicubic)
before SSIM and the similarities, as benchmarks that compare at one size do.
"""

from __future__ import annotations

from pathlib import Path

from editforge.vocabulary import METRIC_NAMES

QUALITY = "quality"


def quality_models(clip_model: str, dinov2_model: str) -> dict:
    return {"clip": clip_model, "dinov2": dinov2_model}


def needs_quality(row: dict, models: dict) -> bool:
    return row.get(QUALITY) is None or row[QUALITY].get("models") != models


def score_quality(rows: list[dict], items: dict, out: Path, store, *, clip_model: str, dinov2_model: str,
                  batch_size: int = 16, device: str | None = None, progress: bool = True) -> int:
    """Compute the metrics of ``rows`` (items.jsonl lines, each edit under ``out``) and write them back
    into ``store``; ``items`` maps item ids to :class:`~.suites.SuiteItem`. Returns how many were scored."""
    from PIL import Image
    from tqdm.auto import tqdm

    from editforge.dataset_builders.metrics import ClipEncoder, Dinov2Encoder, score_batch
    from editforge.dataset_builders.metrics.scoring import _caption, prepare_items

    from .harness import _open_rgb

    if not rows:
        return 0
    models = quality_models(clip_model, dinov2_model)
    clip = ClipEncoder(clip_model, device=device or "cpu")
    dinov2 = Dinov2Encoder(dinov2_model, device=device or "cpu")
    bar = tqdm(total=len(rows), desc="metrics", unit="edit", disable=not progress, dynamic_ncols=True)
    try:
        for begin in range(0, len(rows), batch_size):
            batch = rows[begin: begin + batch_size]
            prepared, pictures = [], []
            for k, row in enumerate(batch):
                item = items[row["item"]]
                source = _open_rgb(item.source_image)
                edited = Image.open(out / row["image"]).convert("RGB")
                if edited.size != source.size:
                    edited = edited.resize(source.size, Image.BICUBIC)
                pictures.append((source, edited))
                prepared.append({
                    "idx": k, "id": row["item"],
                    "source_caption": _caption(item.reference.get("source_caption")),
                    "target_caption": _caption(item.reference.get("target_caption")),
                })
            prepare_items(prepared, pictures, clip.image_processor, dinov2.image_processor)
            for row, values in zip(batch, score_batch(prepared, clip, dinov2)):
                store.append({**row, QUALITY: {**{name: values[name] for name in METRIC_NAMES}, "models": models}})
            bar.update(len(batch))
    finally:
        bar.close()
    return len(rows)
