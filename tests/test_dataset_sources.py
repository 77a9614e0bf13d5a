"""Every source layout round-trips: written as released -> `editforge build-dataset` -> load_dataset.

Each source is a small copy in the release's own column names and file layout
(tests/source_layouts.py). The built folder is read back with `load_dataset(OUT, CONFIG)` and
with `streaming=True`, and every value is compared: images pixel-equal, texts, rewards, metrics,
VIEScore and provenance equal.
"""

import json

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image

import source_layouts as layouts
from editforge.cli import main
from editforge.dataset_builders.features import EDIT_FEATURES, PAIR_FEATURES
from editforge.dataset_builders.synthetic import write_synthetic_dataset

IMAGE_COLUMNS = ("source_image", "edited_image", "mask_image", "image_0", "image_1")
FLOAT_COLUMNS = ("rewards", "metrics", "viescore", "label_0")


def build(fmt, src, out, *extra):
    assert main(["build-dataset", "--format", fmt, str(src), str(out), "--no-progress", *extra]) == 0


def approx_nested(value):
    if isinstance(value, dict):
        return {k: approx_nested(v) for k, v in value.items()}
    if isinstance(value, list):
        return [approx_nested(v) for v in value]
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-6)
    return value


def assert_rows(rows, expected):
    assert sorted(rows) == sorted(expected)
    for item_id, want in expected.items():
        row = rows[item_id]
        for column, value in want.items():
            if column in IMAGE_COLUMNS:
                if value is None:
                    assert row[column] is None, (item_id, column)
                else:
                    image = row[column]
                    assert image.mode == ("L" if value.ndim == 2 else "RGB"), (item_id, column, image.mode)
                    np.testing.assert_array_equal(np.asarray(image), value, err_msg=f"{item_id} {column}")
            elif column in FLOAT_COLUMNS:
                assert row[column] == approx_nested(value), (item_id, column)
            else:
                assert row[column] == value, (item_id, column)
        if "source_image" in want:
            assert (row["width"], row["height"]) == row["source_image"].size


def assert_round_trip(out, config, split, expected, cache):
    features = PAIR_FEATURES if "image_0" in next(iter(expected.values())) else EDIT_FEATURES
    dataset = load_dataset(str(out), config, split=split, cache_dir=str(cache))
    assert dataset.features == features
    assert_rows({row["id"]: row for row in dataset}, expected)
    stream = load_dataset(str(out), config, split=split, streaming=True)
    assert_rows({row["id"]: row for row in stream}, expected)


def manifest_expectations(folder, records, rewards_key=None, rubric_column="rewards", dataset=None):
    expected = {}
    for record in records:
        def image(key, mode):
            return None if record.get(key) is None else np.asarray(Image.open(folder / record[key]).convert(mode))

        value = record.get(rewards_key) if rewards_key else None
        expected[record["id"]] = {
            "source_image": image("source_image", "RGB"), "edited_image": image("edited_image", "RGB"),
            "mask_image": image("mask_image", "L"), "instruction": record["instruction"],
            "source_caption": record["source_caption"], "target_caption": record["target_caption"],
            "task": record["task"], "metrics": None,
            "rewards": value if rubric_column == "rewards" else None,
            "viescore": value if rubric_column == "viescore" else None,
            "provenance": {"dataset": dataset or folder.name, "original_id": record["id"]},
        }
    return expected


def read_records(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_synthetic_manifest_with_ground_truth_rewards(tmp_path):
    world = tmp_path / "world"
    write_synthetic_dataset(world, n=6, seed=5, imperfect_rate=0.5, width=40, height=24, progress=False)
    build("manifest", world, tmp_path / "out", "--rewards-from", "ground_truth")
    expected = manifest_expectations(world, read_records(world), rewards_key="ground_truth")
    assert any(e["mask_image"] is not None for e in expected.values())
    assert_round_trip(tmp_path / "out", "default", "train", expected, tmp_path / "cache")


def test_annotated_manifests_route_rewards_by_rubric_into_two_configs(tmp_path):
    """The annotation engine's output: multi-reward lines (one missing) and viescore-edit lines."""
    world = tmp_path / "world"
    write_synthetic_dataset(world, n=4, seed=1, imperfect_rate=0.5, progress=False)
    records = read_records(world)
    multi, vie = [], []
    for i, record in enumerate(records):
        judged = {**record, "judge": {"model": "oracle", "rubric": "multi-reward", "rubric_version": "1"}}
        judged["rewards"] = None if i == 0 else record["ground_truth"]
        if i == 0:
            judged["error"] = "the judge answered with invalid JSON 3 times"
        multi.append(judged)
        scores = {p: 2 * record["ground_truth"][p]["score"] for p in layouts.PERSPECTIVES}
        sc = min(scores["instruction_following"], scores["detail_preserving"])
        pq = scores["generation_quality"]
        vie.append({**record, "judge": {"model": "oracle", "rubric": "viescore-edit", "rubric_version": "1"},
                    "rewards": {"sc": sc, "pq": pq, "o": (sc * pq) ** 0.5,
                                "sc_scores": [scores["instruction_following"], scores["detail_preserving"]],
                                "pq_scores": [pq, pq], "sc_reasoning": "ok", "pq_reasoning": "clean"}})
    (world / "multi.jsonl").write_text("".join(json.dumps(r) + "\n" for r in multi))
    (world / "vie.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vie))
    out = tmp_path / "out"
    build("manifest", world / "multi.jsonl", out, "--config", "multi_reward", "--provenance", "synthetic-world")
    build("manifest", world / "vie.jsonl", out, "--config", "viescore", "--provenance", "synthetic-world")

    expected = manifest_expectations(world, multi, "rewards", "rewards", dataset="synthetic-world")
    assert expected[records[0]["id"]]["rewards"] is None  # missing stays missing
    assert_round_trip(out, "multi_reward", "train", expected, tmp_path / "cache")
    expected = manifest_expectations(world, vie, "rewards", "viescore", dataset="synthetic-world")
    assert_round_trip(out, "viescore", "train", expected, tmp_path / "cache")

    card = (out / "README.md").read_text()
    assert "config_name: multi_reward" in card and "config_name: viescore" in card
    assert "| `multi_reward` | `train` | manifest | 4 | 0 |" in card


def test_rewardedit20k(tmp_path):
    expected = layouts.write_rewardedit20k(tmp_path / "release")
    build("rewardedit20k", tmp_path / "release", tmp_path / "out", "--config", "rewardedit20k")
    assert_round_trip(tmp_path / "out", "rewardedit20k", "train", expected, tmp_path / "cache")
    card = (tmp_path / "out" / "README.md").read_text()
    # reward distribution in the card: instruction following scored 4, 3, 2
    assert "| instruction_following | 0 | 0 | 1 | 1 | 1 | 0 | 3.00 |" in card


def test_rewardedit20k_with_images_elsewhere(tmp_path):
    expected = layouts.write_rewardedit20k(tmp_path / "ip2p" / "train", n=2)
    (tmp_path / "ip2p" / "train" / "RewardEdit_20K.json").rename(tmp_path / "RewardEdit_20K.json")
    build("rewardedit20k", tmp_path / "RewardEdit_20K.json", tmp_path / "out", "--images-dir", str(tmp_path / "ip2p" / "train"))
    assert_round_trip(tmp_path / "out", "default", "train", expected, tmp_path / "cache")


def test_instructpix2pix(tmp_path):
    expected = layouts.write_instructpix2pix(tmp_path / "ip2p")
    build("instructpix2pix", tmp_path / "ip2p", tmp_path / "out")
    assert_round_trip(tmp_path / "out", "default", "train", expected, tmp_path / "cache")


def test_magicbrush_train_and_dev_splits(tmp_path):
    expected = layouts.write_magicbrush(tmp_path / "MagicBrush")
    out = tmp_path / "out"
    for split in ("train", "dev"):
        build("magicbrush", tmp_path / "MagicBrush", out, "--config", "magicbrush", "--split", split,
              "--source-files", f"data/{split}-*.parquet")
    for split in ("train", "dev"):
        assert_round_trip(out, "magicbrush", split, expected[split], tmp_path / "cache")


def test_ultraedit_free_form_and_region_based(tmp_path):
    expected = layouts.write_ultraedit(tmp_path / "UltraEdit")
    build("ultraedit", tmp_path / "UltraEdit", tmp_path / "out")
    assert_round_trip(tmp_path / "out", "default", "train", expected, tmp_path / "cache")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "`free_form` 2" in card and "`region_based` 2" in card


def test_omniedit(tmp_path):
    expected = layouts.write_omniedit(tmp_path / "OmniEdit")
    build("omniedit", tmp_path / "OmniEdit", tmp_path / "out")
    assert_round_trip(tmp_path / "out", "default", "train", expected, tmp_path / "cache")


@pytest.mark.parametrize("taxonomy", [False, True])
def test_pickapic_preference_pairs(tmp_path, taxonomy):
    expected = layouts.write_pickapic(tmp_path / "pickapic", taxonomy=taxonomy)
    build("pickapic", tmp_path / "pickapic", tmp_path / "out", "--config", "pairs")
    assert_round_trip(tmp_path / "out", "pairs", "train", expected, tmp_path / "cache")


def test_parquet_sources_resume_at_any_row(tmp_path):
    """Resuming skips rows by Parquet metadata (whole files, row groups) and then row by row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from editforge.dataset_builders.builders.parquet_source import iter_parquet_rows

    (tmp_path / "data").mkdir()
    for shard in range(2):
        values = list(range(shard * 7, shard * 7 + 7))
        pq.write_table(pa.table({"a": values}), tmp_path / f"data/train-0000{shard}-of-00002.parquet", row_group_size=3)
    every = [(r.name, r.row, r.values["a"]) for r in iter_parquet_rows(tmp_path, None, ["a"])]
    assert [v for *_, v in every] == list(range(14)) and every[7][:2] == ("data/train-00001-of-00002.parquet", 0)
    for skip in range(16):
        assert [(r.name, r.row, r.values["a"]) for r in iter_parquet_rows(tmp_path, None, ["a"], skip=skip)] == every[skip:]
