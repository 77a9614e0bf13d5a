"""editforge filter: UltraEdit's thresholds and top-k per group, reproduced by a hand count on a fixture."""

import io

import numpy as np
import PIL.Image
import pytest
from datasets import Dataset, load_dataset

from editforge.cli import main
from editforge.commands import filter as filter_command
from editforge.dataset_builders.features import EDIT_FEATURES
from editforge.dataset_builders.metrics import PRESETS, filter_dataset
from editforge.errors import UsageError
from editforge.vocabulary import METRIC_NAMES

TASKS = ("object_swap", "style_change", "object_removal")
RANGES = {"clip_sim_source": (0.15, 0.35), "clip_sim_target": (0.15, 0.35), "clip_sim_dir": (0.1, 0.6),
          "clip_sim_image": (0.65, 1.0), "dinov2_sim": (0.3, 1.0), "ssim": (0.1, 1.0)}


def png(colour) -> dict:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def fixture_rows(n=40, seed=0):
    """Rows with metrics drawn around UltraEdit's thresholds, some null, some exactly on a threshold."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        metrics = {name: float(rng.uniform(*RANGES[name])) for name in METRIC_NAMES}
        if i % 9 == 4:
            metrics["clip_sim_source"] = None  # an item without a source caption
        if i % 13 == 6:
            metrics["dinov2_sim"] = None
        if i == 1:
            metrics.update(clip_sim_image=0.75, clip_sim_dir=0.22, dinov2_sim=0.4, clip_sim_source=0.2,
                           clip_sim_target=0.2)  # exactly on every free-form threshold: kept
        rows.append({
            "id": f"item-{i:03d}", "source_image": png((i, 0, 0)), "edited_image": png((0, i, 0)), "mask_image": None,
            "instruction": f"edit {i // 10}", "source_caption": "a", "target_caption": "b", "task": TASKS[i % 3],
            "width": 8, "height": 8, "provenance": {"dataset": "fixture", "original_id": str(i // 4)},
            "rewards": None, "metrics": None if i == 7 else metrics, "viescore": None,
        })
    return rows


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scored")
    (folder / "data").mkdir()
    rows = fixture_rows()
    Dataset.from_list(rows, features=EDIT_FEATURES).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder, rows


def passes(row, thresholds):
    metrics = row["metrics"]
    if metrics is None:
        return False
    return all(metrics[k] is not None and np.float32(metrics[k]) >= np.float32(v) for k, v in thresholds.items())


def kept_ids(out):
    return [r["id"] for r in load_dataset(str(out), split="train", streaming=True)]


def test_free_form_preset_reproduces_a_hand_count(tmp_path, scored):
    folder, rows = scored
    hand = [r for r in rows if passes(r, {"clip_sim_image": 0.75, "clip_sim_dir": 0.22, "dinov2_sim": 0.4,
                                           "clip_sim_source": 0.2, "clip_sim_target": 0.2})]
    report = filter_dataset(folder, tmp_path / "out", preset="ultraedit-free-form", progress=False)
    assert 0 < report.num_kept == len(hand) < len(rows)
    assert kept_ids(tmp_path / "out") == [r["id"] for r in hand]
    assert "item-001" in kept_ids(tmp_path / "out")  # values exactly on the thresholds pass
    assert report.kept_per_task == {t: sum(r["task"] == t for r in hand) for t in TASKS if any(r["task"] == t for r in hand)}
    # null values a threshold needs drop the row and are counted
    null_rows = [r for r in rows if r["metrics"] is None or any(r["metrics"][k] is None for k in PRESETS["ultraedit-free-form"])]
    assert report.dropped_for_null == len(null_rows) and report.nulls["clip_sim_source"] == sum(
        r["metrics"] is None or r["metrics"]["clip_sim_source"] is None for r in rows)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "preset `ultraedit-free-form`" in card
    assert "`clip_sim_image` >= 0.75" in card and "`clip_sim_dir` >= 0.22" in card and "`dinov2_sim` >= 0.4" in card
    assert "`clip_sim_source` >= 0.2" in card and "`clip_sim_target` >= 0.2" in card
    assert f"kept {len(hand)} of {len(rows)} rows" in card
    assert "Kept per task:" in card and "| `ssim` |" in card and "Input rows" in card
    loaded = load_dataset(str(tmp_path / "out"), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.features == EDIT_FEATURES and loaded[0]["metrics"] == pytest.approx(hand[0]["metrics"])


def test_region_preset_with_top_k_per_instruction(tmp_path, scored):
    folder, rows = scored
    thresholds = dict(PRESETS["ultraedit-region"], ssim=0.3)
    survivors = [r for r in rows if passes(r, thresholds)]
    by_group = {}
    for r in sorted(survivors, key=lambda r: -np.float32(r["metrics"]["clip_sim_dir"])):
        by_group.setdefault(r["instruction"], []).append(r["id"])
    hand = sorted(i for ids in by_group.values() for i in ids[:1])
    assert len(hand) < len(survivors)  # the top-k does drop some
    code = main(["filter", str(folder), str(tmp_path / "out"), "--preset", "ultraedit-region", "--min", "ssim=0.3",
                 "--top-k-by", "clip_sim_dir", "1", "--group-by", "instruction", "--no-progress"])
    assert code == 0
    assert kept_ids(tmp_path / "out") == hand
    card = (tmp_path / "out" / "README.md").read_text()
    assert "`clip_sim_image` >= 0.7," in card and "`ssim` >= 0.3" in card
    assert "top 1 by `clip_sim_dir` per `instruction`" in card
    assert f"dropped by the top-k: {len(survivors) - len(hand)}" in card


def test_top_k_by_a_nested_column_and_over_the_whole_split(tmp_path, scored):
    folder, rows = scored
    report = filter_dataset(folder, tmp_path / "a", top_k=1, top_k_by="ssim", group_by="provenance.original_id",
                            progress=False)
    groups = {}
    for r in rows:
        if r["metrics"] is not None:
            groups.setdefault(r["provenance"]["original_id"], []).append(r)
    hand = sorted(max(g, key=lambda r: r["metrics"]["ssim"])["id"] for g in groups.values())
    assert kept_ids(tmp_path / "a") == hand and report.nulls == {"ssim": 1} and report.dropped_for_null == 1
    filter_dataset(folder, tmp_path / "b", top_k=3, top_k_by="clip_sim_dir", progress=False)
    best = sorted((r for r in rows if r["metrics"] is not None), key=lambda r: -r["metrics"]["clip_sim_dir"])[:3]
    assert kept_ids(tmp_path / "b") == sorted(r["id"] for r in best)


def test_bad_arguments_are_one_line_errors(tmp_path, scored, capsys):
    folder, _ = scored
    with pytest.raises(SystemExit) as caught:
        main(["filter", str(folder), str(tmp_path / "out"), "--min", "clip_sim=0.2"])
    assert caught.value.code == 2 and "expected NAME=VALUE with NAME one of clip_sim_source" in capsys.readouterr().err
    assert main(["filter", str(folder), str(tmp_path / "out"), "--top-k-by", "clip_sim_dir", "0"]) == 2
    assert "--top-k-by: K must be 1 or more" in capsys.readouterr().err
    with pytest.raises(UsageError, match="group_by needs top_k"):
        filter_dataset(folder, tmp_path / "out", preset="ultraedit-region", group_by="instruction", progress=False)
    with pytest.raises(UsageError, match="no column 'nope'"):
        filter_dataset(folder, tmp_path / "out", top_k=1, group_by="nope", progress=False)
    with pytest.raises(UsageError, match="no row of 40 passes"):
        filter_dataset(folder, tmp_path / "out", thresholds={"ssim": 2.0}, progress=False)
    assert not (tmp_path / "out").exists() or not (tmp_path / "out" / "README.md").exists()


def test_the_command_line_knows_the_presets():
    assert filter_command.PRESET_NAMES == tuple(PRESETS)
    assert PRESETS["ultraedit-free-form"] == {"clip_sim_image": 0.75, "clip_sim_dir": 0.22, "dinov2_sim": 0.4,
                                              "clip_sim_source": 0.2, "clip_sim_target": 0.2}
    assert PRESETS["ultraedit-region"] == dict(PRESETS["ultraedit-free-form"], clip_sim_image=0.7)
