"""Small copies of the public editing datasets, written in exactly their column names and layouts.

Each writer puts a source on disk the way its release ships it and returns what editforge must
read back: ``{id: expected canonical row}`` with images as uint8 arrays (RGB; masks grey).

Layouts (from the releases' dataset cards and loaders):
- RewardEdit20K: ``RewardEdit_20K.json`` {folder: [{"Score", "Negative Prompt"} x3]} beside the
  InstructPix2Pix folders ``<7 digits>/{<seed>_0.jpg, <seed>_1.jpg, prompt.json, metadata.jsonl}``.
- timbrooks/instructpix2pix-clip-filtered: data/train-*.parquet, original_prompt, original_image,
  edit_prompt, edited_prompt, edited_image.
- osunlp/MagicBrush: data/{train,dev}-*.parquet, img_id, turn_index (int32), source_img, mask_img,
  instruction, target_img.
- BleachNick/UltraEdit: data/FreeForm_0-*.parquet (edit_object and mask_image of type null) and
  data/RegionBase-*.parquet; metrics float64, idx int64.
- TIGER-Lab/OmniEdit-Filtered-1.2M: data/{train,dev}-*.parquet, omni_edit_id, task, src_img,
  edited_img, edited_prompt_list, width, height, sc_score_1, sc_score_2, sc_reasoning, pq_score,
  pq_reasoning, o_score.
- yuvalkirstain/pickapic_v2: data/train-*.parquet with its 19 columns, jpg_0/jpg_1 raw binary.
"""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

PERSPECTIVES = ("instruction_following", "detail_preserving", "generation_quality")


def pixels(seed: int, width: int = 24, height: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def mask_pixels(seed: int, width: int = 24, height: int = 16) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    x = seed % (width // 2)
    mask[2:10, x:x + 8] = 255
    return mask


def encode(array: np.ndarray, format: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format=format, **kwargs)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    image = PILImage.open(io.BytesIO(data))
    return np.asarray(image.convert("L" if image.mode == "L" else "RGB"))


def as_struct(data: bytes, name: str) -> dict:
    """An ``Image()`` cell as the Hub's Parquet files hold it: embedded bytes and the file name."""
    return {"bytes": data, "path": name}


def _write_hub_parquet(path: Path, columns: dict, features: Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=features).to_parquet(str(path))


# -- RewardEdit20K ------------------------------------------------------------------------------

def write_rewardedit20k(root: Path, n: int = 3) -> dict:
    """RewardEdit_20K.json + IP2P sample folders (JPEG pairs, prompt.json, metadata.jsonl)."""
    scores, expected = {}, {}
    for i in range(n):
        name = f"{1000 + i:07d}"
        seed = 4000000000 + 17 * i
        folder = root / name
        folder.mkdir(parents=True)
        source, edited = encode(pixels(10 + i), "JPEG", quality=95), encode(pixels(20 + i), "JPEG", quality=95)
        (folder / f"{seed}_0.jpg").write_bytes(source)
        (folder / f"{seed}_1.jpg").write_bytes(edited)
        prompt = {"input": f"a photo of thing {i}", "edit": f"make thing {i} red",
                  "output": f"a photo of red thing {i}", "url": f"http://example.com/{i}.jpg"}
        (folder / "prompt.json").write_text(json.dumps(prompt))
        other_seed = seed + 1  # metadata of seeds that were filtered out is there too
        lines = [
            {"seed": other_seed, "p2p_threshold": 0.5, "cfg_scale": 8.0, "clip_sim_0": 0.1, "clip_sim_1": 0.1,
             "clip_sim_dir": 0.1, "clip_sim_image": 0.1},
            {"seed": seed, "p2p_threshold": 0.4, "cfg_scale": 9.5, "clip_sim_0": 0.25 + i / 100,
             "clip_sim_1": 0.3, "clip_sim_dir": 0.21, "clip_sim_image": 0.8},
        ]
        (folder / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        entry = [
            {"Score": 4 - i, "Negative Prompt": f"the thing is not red enough {i}"},
            {"Score": 5, "Negative Prompt": "None"},
            {"Score": 3, "Negative Prompt": "blurry edges"},
        ]
        scores[name] = entry
        expected[name] = {
            "source_image": decoded(source), "edited_image": decoded(edited), "mask_image": None,
            "instruction": prompt["edit"], "source_caption": prompt["input"], "target_caption": prompt["output"],
            "task": None,
            "rewards": {p: {"score": float(e["Score"]), "feedback": e["Negative Prompt"]} for p, e in zip(PERSPECTIVES, entry)},
            "metrics": {"clip_sim_source": 0.25 + i / 100, "clip_sim_target": 0.3, "clip_sim_dir": 0.21,
                        "clip_sim_image": 0.8, "dinov2_sim": None, "ssim": None},
            "viescore": None, "provenance": {"dataset": "Gstar666/RewardEdit", "original_id": name},
        }
    (root / "RewardEdit_20K.json").write_text(json.dumps(scores, indent=2))
    return expected


# -- InstructPix2Pix clip-filtered --------------------------------------------------------------

IP2P_FEATURES = Features({
    "original_prompt": Value("string"), "original_image": Image(), "edit_prompt": Value("string"),
    "edited_prompt": Value("string"), "edited_image": Image(),
})


def write_instructpix2pix(root: Path, n: int = 3) -> dict:
    shard = "data/train-00000-of-00001.parquet"
    columns = {k: [] for k in IP2P_FEATURES}
    expected = {}
    for i in range(n):
        source, edited = encode(pixels(30 + i)), encode(pixels(40 + i))
        columns["original_prompt"].append(f"a house {i}")
        columns["original_image"].append(as_struct(source, f"{i}_0.png"))
        columns["edit_prompt"].append(f"turn house {i} into a castle")
        columns["edited_prompt"].append(f"a castle {i}")
        columns["edited_image"].append(as_struct(edited, f"{i}_1.png"))
        item_id = f"{shard}:{i}"
        expected[item_id] = {
            "source_image": decoded(source), "edited_image": decoded(edited), "mask_image": None,
            "instruction": f"turn house {i} into a castle", "source_caption": f"a house {i}",
            "target_caption": f"a castle {i}", "task": None, "rewards": None, "metrics": None, "viescore": None,
            "provenance": {"dataset": "timbrooks/instructpix2pix-clip-filtered", "original_id": item_id},
        }
    _write_hub_parquet(root / shard, columns, IP2P_FEATURES)
    return expected


# -- MagicBrush ---------------------------------------------------------------------------------

MAGICBRUSH_FEATURES = Features({
    "img_id": Value("string"), "turn_index": Value("int32"), "source_img": Image(), "mask_img": Image(),
    "instruction": Value("string"), "target_img": Image(),
})


def write_magicbrush(root: Path, splits=(("train", 3), ("dev", 2))) -> dict:
    """Returns {split: {id: expected}}; masks are RGB images with the region in white, as released."""
    expected = {}
    for split, n in splits:
        columns = {k: [] for k in MAGICBRUSH_FEATURES}
        expected[split] = {}
        for i in range(n):
            img_id, turn = str(327726 + i + (100 if split == "dev" else 0)), 1 + i % 2
            source, target = encode(pixels(50 + i)), encode(pixels(60 + i))
            mask = mask_pixels(i)
            mask_rgb = encode(np.stack([mask] * 3, axis=-1))
            columns["img_id"].append(img_id)
            columns["turn_index"].append(turn)
            columns["source_img"].append(as_struct(source, f"{img_id}-input.png"))
            columns["mask_img"].append(as_struct(mask_rgb, f"{img_id}-mask{turn}.png"))
            columns["instruction"].append(f"put a hat on the dog {i}")
            columns["target_img"].append(as_struct(target, f"{img_id}-output{turn}.png"))
            item_id = f"{img_id}-{turn}"
            expected[split][item_id] = {
                "source_image": decoded(source), "edited_image": decoded(target), "mask_image": mask,
                "instruction": f"put a hat on the dog {i}", "source_caption": None, "target_caption": None,
                "task": None, "rewards": None, "metrics": None, "viescore": None,
                "provenance": {"dataset": "osunlp/MagicBrush", "original_id": item_id},
            }
        _write_hub_parquet(root / f"data/{split}-00000-of-00001.parquet", columns, MAGICBRUSH_FEATURES)
    return expected


# -- UltraEdit ----------------------------------------------------------------------------------

ULTRAEDIT_METRICS = ("clip_sim_source", "clip_sim_target", "clip_sim_dir", "clip_sim_image", "dinov2_sim", "ssim")


def _ultraedit_features(region: bool) -> Features:
    return Features({
        **{m: Value("float64") for m in ULTRAEDIT_METRICS},
        "source_caption": Value("string"), "target_caption": Value("string"), "idx": Value("int64"),
        "edit_prompt": Value("string"),
        "edit_object": Value("string") if region else Value("null"),
        "source_image": Image(), "edited_image": Image(),
        "mask_image": Image() if region else Value("null"),
    })


def write_ultraedit(root: Path, n_free: int = 2, n_region: int = 2) -> dict:
    """Free-form shard (FreeForm_0) and region-based shard (RegionBase) of the release."""
    expected = {}
    for split, n, region in (("FreeForm_0", n_free, False), ("RegionBase", n_region, True)):
        features = _ultraedit_features(region)
        columns = {k: [] for k in features}
        for i in range(n):
            idx = 500 + i
            source, edited = encode(pixels(70 + i + 10 * region)), encode(pixels(80 + i + 10 * region))
            mask = mask_pixels(i + 3)
            values = {m: 0.1 * (j + 1) + i / 1000 for j, m in enumerate(ULTRAEDIT_METRICS)}
            for m in ULTRAEDIT_METRICS:
                columns[m].append(values[m])
            columns["source_caption"].append(f"a cat on a sofa {i}")
            columns["target_caption"].append(f"a dog on a sofa {i}")
            columns["idx"].append(idx)
            columns["edit_prompt"].append(f"replace the cat with a dog {i}")
            columns["edit_object"].append("cat" if region else None)
            columns["source_image"].append(as_struct(source, f"{idx}_src.png"))
            columns["edited_image"].append(as_struct(edited, f"{idx}_edit.png"))
            columns["mask_image"].append(as_struct(encode(mask), f"{idx}_mask.png") if region else None)
            item_id = f"{split}-{idx}"
            expected[item_id] = {
                "source_image": decoded(source), "edited_image": decoded(edited),
                "mask_image": mask if region else None,
                "instruction": f"replace the cat with a dog {i}", "source_caption": f"a cat on a sofa {i}",
                "target_caption": f"a dog on a sofa {i}", "task": "region_based" if region else "free_form",
                "rewards": None, "metrics": values, "viescore": None,
                "provenance": {"dataset": "BleachNick/UltraEdit", "original_id": item_id},
            }
        _write_hub_parquet(root / f"data/{split}-00000-of-00001.parquet", columns, features)
    return expected


# -- OmniEdit -----------------------------------------------------------------------------------

OMNIEDIT_FEATURES = Features({
    "omni_edit_id": Value("string"), "task": Value("string"), "src_img": Image(), "edited_img": Image(),
    "edited_prompt_list": List(Value("string")), "width": Value("int64"), "height": Value("int64"),
    "sc_score_1": Value("int64"), "sc_score_2": Value("int64"), "sc_reasoning": Value("string"),
    "pq_score": Value("int64"), "pq_reasoning": Value("string"), "o_score": Value("float64"),
})


def write_omniedit(root: Path, n: int = 3) -> dict:
    """Images of another aspect ratio (32x20), as OmniEdit has any aspect ratio."""
    columns = {k: [] for k in OMNIEDIT_FEATURES}
    expected = {}
    for i in range(n):
        item_id = f"task_obj_swap_{i:06d}"
        source, edited = encode(pixels(90 + i, 32, 20)), encode(pixels(95 + i, 32, 20))
        sc1, sc2, pq_score = 9 - i, 7 + i, 8
        o_score = float(np.sqrt(min(sc1, sc2) * pq_score))
        row = {
            "omni_edit_id": item_id, "task": "swap", "src_img": as_struct(source, f"{item_id}_src.png"),
            "edited_img": as_struct(edited, f"{item_id}_edit.png"),
            "edited_prompt_list": [f"Swap the apple for a pear {i}.", f"Replace the apple with a pear {i}."],
            "width": 32, "height": 20, "sc_score_1": sc1, "sc_score_2": sc2, "sc_reasoning": f"edit done {i}",
            "pq_score": pq_score, "pq_reasoning": "natural", "o_score": o_score,
        }
        for k, v in row.items():
            columns[k].append(v)
        expected[item_id] = {
            "source_image": decoded(source), "edited_image": decoded(edited), "mask_image": None,
            "instruction": f"Swap the apple for a pear {i}.", "source_caption": None, "target_caption": None,
            "task": "swap", "rewards": None, "metrics": None,
            "viescore": {"sc": float(min(sc1, sc2)), "pq": 8.0, "o": o_score, "sc_scores": [float(sc1), float(sc2)],
                         "pq_scores": [8.0], "sc_reasoning": f"edit done {i}", "pq_reasoning": "natural"},
            "provenance": {"dataset": "TIGER-Lab/OmniEdit-Filtered-1.2M", "original_id": item_id},
        }
    _write_hub_parquet(root / "data/train-00000-of-00001.parquet", columns, OMNIEDIT_FEATURES)
    return expected


# -- Pick-a-Pic ---------------------------------------------------------------------------------

PICKAPIC_SCHEMA = pa.schema([
    ("are_different", pa.bool_()), ("best_image_uid", pa.string()), ("caption", pa.string()),
    ("created_at", pa.timestamp("ns")), ("has_label", pa.bool_()), ("image_0_uid", pa.string()),
    ("image_0_url", pa.string()), ("image_1_uid", pa.string()), ("image_1_url", pa.string()),
    ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()), ("label_1", pa.float64()),
    ("model_0", pa.string()), ("model_1", pa.string()), ("ranking_id", pa.int64()), ("user_id", pa.int64()),
    ("num_example_per_prompt", pa.int64()), ("__index_level_0__", pa.int64()),
])


def write_pickapic(root: Path, labels=(1.0, 0.0, 0.5), taxonomy: bool = False) -> dict:
    """pickapic_v2's columns; with ``taxonomy`` also theme/subtopic/contrast/pair_id (InstructEngine-style)."""
    rows, expected = [], {}
    for i, label in enumerate(labels):
        first, second = encode(pixels(100 + i), "JPEG", quality=90), encode(pixels(110 + i), "JPEG", quality=90)
        ranking_id = 77000 + i
        row = {
            "are_different": True, "best_image_uid": f"uid-{i}-{0 if label == 1 else 1}", "caption": f"a red fox {i}",
            "created_at": datetime.datetime(2023, 5, 1, 12, 0), "has_label": True,
            "image_0_uid": f"uid-{i}-0", "image_0_url": f"https://example.com/{i}-0.jpg",
            "image_1_uid": f"uid-{i}-1", "image_1_url": f"https://example.com/{i}-1.jpg",
            "jpg_0": first, "jpg_1": second, "label_0": label, "label_1": 1 - label,
            "model_0": "sdxl", "model_1": "sd15", "ranking_id": ranking_id, "user_id": 42,
            "num_example_per_prompt": 1, "__index_level_0__": i,
        }
        rows.append(row)
        expected[str(ranking_id)] = {
            "prompt": f"a red fox {i}", "image_0": decoded(first), "image_1": decoded(second), "label_0": label,
            "theme": f"animals {i}" if taxonomy else None, "subtopic": "foxes" if taxonomy else None,
            "contrast": "counterfactual" if taxonomy else None,
            "pair_id": f"pair-{i // 2}" if taxonomy else None,
            "provenance": {"dataset": "yuvalkirstain/pickapic_v2", "original_id": str(ranking_id)},
        }
    table = pa.Table.from_pylist(rows, schema=PICKAPIC_SCHEMA)
    if taxonomy:
        for name in ("theme", "subtopic", "contrast", "pair_id"):
            table = table.append_column(name, pa.array([expected[str(77000 + i)][name] for i in range(len(rows))]))
    path = root / "data/train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return expected
