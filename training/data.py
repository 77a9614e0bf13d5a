"""Training data: canonical edit and preference-pair datasets, resolution and aspect-ratio handling.

Datasets are loaded with ``load_dataset`` from a local folder or a Hub id and must carry
editforge's canonical features (``editforge.dataset_builders.features``): edit triplets
(``source_image``, ``edited_image``, ``instruction``, and ``rewards`` for reward-conditioned
training) or preference pairs (``prompt``, ``image_0``, ``image_1``, ``label_0``, ``pair_id``).

Resolution: by default every example is resized so its shorter side is ``resolution`` and cropped
to a square (centre or a seeded random crop, the same window for source and edited). With
aspect-ratio buckets, each example goes to the bucket shape (a multiple of 64 pixels per side,
about ``resolution**2`` pixels) nearest its aspect ratio, and every batch holds one shape.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from editforge.errors import UsageError
from editforge.vocabulary import NO_FAILURE, PERSPECTIVES

REQUIRED_COLUMNS = ("source_image", "edited_image", "instruction")


def load_edit_dataset(name_or_path: str, config_name: str | None = None, split: str = "train",
                      cache_dir: str | None = None, max_samples: int | None = None, require_rewards: bool = False):
    """An edit-triplet ``datasets.Dataset`` from a local folder or a Hub id, checked for the
    canonical columns. With ``require_rewards``, rows whose rewards are missing are left out
    (and counted in ``dataset.info.description``); none is ever filled in."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(name_or_path, config_name, split=split, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"cannot load dataset {name_or_path!r} (config {config_name!r}, split {split!r}): {err}") from None
    missing = [c for c in REQUIRED_COLUMNS + (("rewards",) if require_rewards else ()) if c not in dataset.column_names]
    if missing:
        raise UsageError(
            f"dataset {name_or_path!r} lacks column(s) {', '.join(missing)}; build it with "
            "`editforge build-dataset` to get editforge's canonical features"
        )
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if require_rewards:
        keep = [i for i, r in enumerate(dataset["rewards"]) if rewards_complete(r)]
        if not keep:
            raise UsageError(f"no example of {name_or_path!r} has all three reward scores; annotate it first")
        dropped = len(dataset) - len(keep)
        if dropped:
            dataset = dataset.select(keep)
        dataset.info.description = f"{dropped} examples without complete rewards left out"
    if len(dataset) == 0:
        raise UsageError(f"dataset {name_or_path!r} split {split!r} is empty")
    return dataset


def rewards_complete(rewards) -> bool:
    return isinstance(rewards, dict) and all(
        isinstance(rewards.get(p), dict) and rewards[p].get("score") is not None for p in PERSPECTIVES
    )


def reward_scores(rewards) -> list[float]:
    return [float(rewards[p]["score"]) for p in PERSPECTIVES]


def reward_feedback(rewards) -> dict[str, str]:
    return {p: (rewards[p].get("feedback") or NO_FAILURE) for p in PERSPECTIVES}


def bucket_shapes(resolution: int, step: int = 64, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """(width, height) shapes, multiples of ``step``, of about ``resolution**2`` pixels."""
    step = min(step, resolution)
    area = resolution * resolution
    shapes = set()
    for width in range(step, int(resolution * math.sqrt(max_ratio)) + step, step):
        height = max(step, int(round(area / width / step)) * step)
        if 1 / max_ratio <= width / height <= max_ratio:
            shapes.add((width, height))
    return sorted(shapes)


def nearest_bucket(width: int, height: int, shapes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(width / height)
    return min(shapes, key=lambda s: abs(math.log(s[0] / s[1]) - ratio))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a [3, H, W] float tensor in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def fit_window(size: tuple[int, int], width: int, height: int,
               offset: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int, int, int]:
    """Where :func:`fit` puts an image of ``size``: ``(resized width, resized height, left, top)``."""
    source_w, source_h = size
    scale = max(width / source_w, height / source_h)
    new_w, new_h = max(width, round(source_w * scale)), max(height, round(source_h * scale))
    return new_w, new_h, int(round((new_w - width) * offset[0])), int(round((new_h - height) * offset[1]))


def fit(images: Sequence[Image.Image], width: int, height: int, offset: tuple[float, float] = (0.5, 0.5)) -> list[Image.Image]:
    """Resize images (all the same size) to cover ``width x height`` and crop there; ``offset``
    places the window (0.5, 0.5 = centre), the same for every image."""
    new_w, new_h, left, top = fit_window(images[0].size, width, height, offset)
    out = []
    for image in images:
        if image.size != (new_w, new_h):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        out.append(image.crop((left, top, left + width, top + height)))
    return out


@dataclass
class EditExamples(torch.utils.data.Dataset):
    """A canonical edit dataset as training examples: pixel tensors in [-1, 1] at the example's
    shape, the instruction and, when present, reward scores [3] and feedback per perspective."""

    dataset: object
    shapes: list[tuple[int, int]]
    center_crop: bool = True
    seed: int = 0
    with_mask: bool = False  # add "mask": the row's mask_image as RGB in [-1, 1], all white (edit everywhere) if null

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        width, height = self.shapes[index]
        if row["source_image"].size != row["edited_image"].size:
            raise UsageError(f"example {row.get('id', index)!r}: source and edited images differ in size")
        if self.center_crop:
            offset = (0.5, 0.5)
        else:  # seeded per example, so a resumed run sees the same crops
            rng = random.Random(f"{self.seed}:{row.get('id', index)}")
            offset = (rng.random(), rng.random())
        source, edited = fit([row["source_image"], row["edited_image"]], width, height, offset)
        example = {"index": index, "source": to_tensor(source), "edited": to_tensor(edited), "instruction": row["instruction"]}
        if self.with_mask:
            mask = row.get("mask_image") or Image.new("L", row["source_image"].size, 255)
            (mask,) = fit([mask.convert("L").convert("RGB")], width, height, offset)
            example["mask"] = to_tensor(mask)
        rewards = row.get("rewards")
        if rewards_complete(rewards):
            example["scores"] = torch.tensor(reward_scores(rewards))
            example["feedback"] = reward_feedback(rewards)
        return example


def example_shapes(dataset, resolution: int, aspect_ratio_buckets: bool) -> list[tuple[int, int]]:
    """The training shape of every example (one square, or its aspect-ratio bucket)."""
    if not aspect_ratio_buckets:
        return [(resolution, resolution)] * len(dataset)
    shapes = bucket_shapes(resolution)
    if "width" in dataset.column_names and "height" in dataset.column_names:
        sizes = zip(dataset["width"], dataset["height"])
    else:
        sizes = (row["source_image"].size for row in dataset)
    return [nearest_bucket(w, h, shapes) for w, h in sizes]


PAIR_COLUMNS = ("prompt", "image_0", "image_1", "label_0")
TIE = 0.5


def load_pair_dataset(name_or_path: str, config_name: str | None = None, split: str = "train",
                      cache_dir: str | None = None, max_samples: int | None = None, keep_ties: bool = False):
    """A preference-pair ``datasets.Dataset`` in the canonical pair features (``editforge
    build-dataset --format pickapic``, InstructEngine-style pairs), checked for the columns. Ties
    (``label_0`` 0.5) are left out (and counted in ``dataset.info.description``) unless ``keep_ties``."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(name_or_path, config_name, split=split, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"cannot load dataset {name_or_path!r} (config {config_name!r}, split {split!r}): {err}") from None
    missing = [c for c in PAIR_COLUMNS if c not in dataset.column_names]
    if missing:
        raise UsageError(f"dataset {name_or_path!r} lacks column(s) {', '.join(missing)}; build it with "
                         "`editforge build-dataset --format pickapic` to get editforge's pair features")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if not keep_ties:
        keep = [i for i, label in enumerate(dataset["label_0"]) if label != TIE]
        dropped = len(dataset) - len(keep)
        if dropped:
            dataset = dataset.select(keep)
        dataset.info.description = f"{dropped} tied pairs left out" if dropped else ""
    if len(dataset) == 0:
        raise UsageError(f"dataset {name_or_path!r} split {split!r} has no pairs to train on")
    return dataset


def contrasting_pairs(dataset, cross_validation: bool) -> list[list[int]]:
    """Row indices of each training pair. Rows that share a ``pair_id`` form one contrasting pair
    (InstructEngine): with ``cross_validation`` both rows are used (each image wins under its own
    prompt), otherwise only the first. A row without ``pair_id`` is a pair of its own; cross-
    validation needs every row in a pair of two with opposite labels and different prompts."""
    groups: dict[str, list[int]] = {}
    order = []
    pair_ids = dataset["pair_id"] if "pair_id" in dataset.column_names else [None] * len(dataset)
    for index, pair_id in enumerate(pair_ids):
        key = f"row:{index}" if pair_id is None else pair_id
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(index)
    if not cross_validation:
        return [[groups[key][0]] for key in order]
    labels, prompts = dataset["label_0"], dataset["prompt"]
    for key in order:
        rows = groups[key]
        name = f"row {rows[0]}" if key.startswith("row:") else f"pair {key!r}"
        if len(rows) != 2:
            raise UsageError(f"{name}: cross-validation needs two rows per contrasting pair (pair_id), got {len(rows)};"
                             " pairs without a pair_id (Pick-a-Pic) train with --alignment single_pair")
        if sorted(labels[i] for i in rows) != [0.0, 1.0] or prompts[rows[0]] == prompts[rows[1]]:
            raise UsageError(f"{name}: the two rows must have different prompts and opposite labels (1 and 0)")
    return [groups[key] for key in order]


@dataclass
class PairExamples(torch.utils.data.Dataset):
    """Training pairs as examples: both images ``[2, 3, H, W]`` in [-1, 1] (cropped alike), their
    original size and the crop's top left corner (``(h, w)``, ``(top, left)``: SDXL's micro-conditions),
    and one comparison per row of the pair: its prompt, which image wins (0 or 1) and whether it is
    a tie."""

    dataset: object
    pairs: list[list[int]]
    resolution: int
    center_crop: bool = True
    seed: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        rows = [self.dataset[i] for i in self.pairs[index]]
        first = rows[0]
        if first["image_0"].size != first["image_1"].size:
            raise UsageError(f"pair {first.get('id', index)!r}: image_0 and image_1 differ in size")
        for row in rows[1:]:
            if any(row[k].tobytes() != first[k].tobytes() for k in ("image_0", "image_1")):
                raise UsageError(f"pair {row.get('pair_id')!r}: its rows must hold the same two images")
        rng = random.Random(f"{self.seed}:{first.get('id', index)}")
        offset = (0.5, 0.5) if self.center_crop else (rng.random(), rng.random())
        images = fit([first["image_0"].convert("RGB"), first["image_1"].convert("RGB")], self.resolution, self.resolution, offset)
        _, _, left, top = fit_window(first["image_0"].size, self.resolution, self.resolution, offset)
        return {
            "index": index,
            "images": torch.stack([to_tensor(image) for image in images]),
            "original_size": (first["image_0"].height, first["image_0"].width),
            "crop_top_left": (top, left),
            "prompts": [row["prompt"] for row in rows],
            "winners": [0 if row["label_0"] >= TIE else 1 for row in rows],
            "ties": [row["label_0"] == TIE for row in rows],
        }
