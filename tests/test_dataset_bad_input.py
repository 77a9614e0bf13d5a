"""Bad input: odd image modes are converted explicitly; bad items are reported by id and reason,
stop the build (`--on-error fail`, nothing published) or are left out and counted (`skip`)."""

import io
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from PIL import Image, ImageOps

import source_layouts as layouts
from editforge.dataset_builders.build import build_dataset
from editforge.dataset_builders.errors import ItemError
from editforge.errors import UsageError

W, H = 24, 16
JPEG_START = b"\xff\xd8"
GOOD_REWARDS = {p: {"score": 4, "feedback": "None"} for p in layouts.PERSPECTIVES}


def save(folder, name, data):
    path = folder / "images" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        data.save(path)
    return f"images/{name}"


def write_manifest(folder, items):
    """items: id -> dict(source=, edited=, mask=, rewards=) with PIL images, raw bytes or None."""
    lines = []
    for item_id, item in items.items():
        record = {"id": item_id, "instruction": f"edit {item_id}", "source_caption": None,
                  "target_caption": None, "task": "attribute_change", "mask_image": None}
        for key, field in (("source", "source_image"), ("edited", "edited_image"), ("mask", "mask_image")):
            value = item.get(key)
            if isinstance(value, str):  # a path to a file that is not there
                record[field] = value
            elif value is not None:
                suffix = "jpg" if isinstance(value, bytes) and value.startswith(JPEG_START) else "png"
                record[field] = save(folder, f"{item_id}_{key}.{suffix}", value)
        if "rewards" in item:
            record["rewards"] = item["rewards"]
            record["judge"] = {"model": "m", "rubric": "multi-reward", "rubric_version": "1"}
        lines.append(json.dumps(record))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def rgb(seed):
    return Image.fromarray(layouts.pixels(seed, W, H))


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def zero_width_png():
    """A PNG whose header declares 0 x 16 pixels (Pillow cannot write one)."""
    data = bytearray(png_bytes(rgb(0)))
    data[16:20] = (0).to_bytes(4, "big")
    return bytes(data)


def rows_of(out, config="default", split="train", tmp=None):
    dataset = load_dataset(str(out), config, split=split, cache_dir=str(tmp / "cache"))
    return {row["id"]: row for row in dataset}


# -- explicit conversions -----------------------------------------------------------------------

def test_odd_modes_are_converted_to_rgb_explicitly(tmp_path):
    base = layouts.pixels(1, W, H)
    alpha = np.where(np.arange(W)[None, :] < W // 2, 255, 0).astype(np.uint8).repeat(H, 0)
    rgba = Image.fromarray(np.dstack([base, alpha]), "RGBA")
    grey = Image.fromarray(base[..., 0], "L")
    grey_alpha = Image.fromarray(np.dstack([base[..., 0], alpha]), "LA")
    palette = Image.fromarray(base).quantize(colors=16)
    palette_key = palette.copy()
    palette_key.info["transparency"] = 0
    sixteen = (np.arange(W * H, dtype=np.uint16).reshape(H, W) * 150)
    cmyk = io.BytesIO()
    Image.fromarray(base).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    cmyk = cmyk.getvalue()
    bilevel = Image.fromarray(base[..., 0] > 127)
    white = np.full((H, W, 3), 255, np.uint8)

    cases = {
        "rgba": (rgba, np.where(alpha[..., None] == 255, base, white)),
        "grey": (grey, np.stack([base[..., 0]] * 3, -1)),
        "grey_alpha": (grey_alpha, np.where(alpha[..., None] == 255, np.stack([base[..., 0]] * 3, -1), white)),
        "palette": (palette, np.asarray(palette.convert("RGB"))),
        "palette_key": (png_bytes(palette_key), np.where((np.asarray(palette) == 0)[..., None], white, np.asarray(palette.convert("RGB")))),
        "sixteen": (Image.fromarray(sixteen), np.stack([np.rint(sixteen / 257).astype(np.uint8)] * 3, -1)),
        "cmyk": (cmyk, np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"))),  # Pillow's CMYK -> RGB
        "bilevel": (bilevel, np.stack([np.where(base[..., 0] > 127, 255, 0).astype(np.uint8)] * 3, -1)),
    }
    # the fixtures really are in those modes
    assert np.asarray(Image.open(io.BytesIO(png_bytes(Image.fromarray(sixteen))))).dtype == np.uint16
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    assert Image.open(io.BytesIO(png_bytes(palette_key))).info["transparency"] == 0
    assert 0 < (np.asarray(palette) == 0).sum() < W * H
    mask_rgba = Image.fromarray(np.dstack([np.full((H, W, 3), 255, np.uint8), alpha]), "RGBA")
    items = {name: {"source": image, "edited": rgb(2)} for name, (image, _) in cases.items()}
    items["rgba"]["mask"] = mask_rgba  # transparent mask pixels are not part of the region
    folder = write_manifest(tmp_path / "src", items)
    build_dataset("manifest", folder, tmp_path / "out", progress=False)

    rows = rows_of(tmp_path / "out", tmp=tmp_path)
    for name, (_, want) in cases.items():
        assert rows[name]["source_image"].mode == "RGB", name
        np.testing.assert_array_equal(np.asarray(rows[name]["source_image"]), want, err_msg=name)
    mask = rows["rgba"]["mask_image"]
    assert mask.mode == "L"
    np.testing.assert_array_equal(np.asarray(mask), np.where(alpha == 255, 255, 0))


def test_rgb_files_are_stored_byte_for_byte_and_exif_orientation_is_applied(tmp_path):
    jpeg = layouts.encode(layouts.pixels(3, W, H), "JPEG", quality=90)
    rotated = Image.fromarray(layouts.pixels(4, W, H))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buffer = io.BytesIO()
    rotated.save(buffer, format="JPEG", exif=exif, quality=95)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))).convert("RGB"))
    folder = write_manifest(tmp_path / "src", {
        "jpeg": {"source": jpeg, "edited": layouts.encode(layouts.pixels(5, W, H), "JPEG")},
        "exif": {"source": buffer.getvalue(), "edited": Image.fromarray(np.zeros((W, H, 3), np.uint8))},
    })
    report = build_dataset("manifest", folder, tmp_path / "out", progress=False)
    table = pq.read_table(report.shards[0]).to_pylist()
    stored = {row["id"]: row for row in table}
    assert stored["jpeg"]["source_image"]["bytes"] == jpeg
    rows = rows_of(tmp_path / "out", tmp=tmp_path)
    np.testing.assert_array_equal(np.asarray(rows["exif"]["source_image"]), upright)
    assert (rows["exif"]["width"], rows["exif"]["height"]) == (H, W)


# -- bad items ----------------------------------------------------------------------------------

def bad_items():
    """id -> (item, kind, words the reason must contain)."""
    good = png_bytes(rgb(7))
    return {
        "truncated": ({"source": good[: len(good) // 2], "edited": rgb(8)}, "corrupt_image", "truncated or corrupt"),
        "garbage": ({"source": b"this is not an image at all", "edited": rgb(8)}, "corrupt_image", "not an image"),
        "missing": ({"source": "images/nowhere.png", "edited": rgb(8)}, "missing_file", "does not exist"),
        "empty": ({"source": b"", "edited": rgb(8)}, "zero_size", "empty (0 bytes)"),
        "zero_width": ({"source": zero_width_png(), "edited": rgb(8)}, "zero_size", "0x16 pixels"),
        "sizes": ({"source": rgb(7), "edited": Image.new("RGB", (W + 8, H))}, "size_mismatch",
                  f"source image is {W}x{H} but the edited image is {W + 8}x{H}"),
        "mask_size": ({"source": rgb(7), "edited": rgb(8), "mask": Image.new("L", (8, 8))}, "size_mismatch", "mask is 8x8"),
        "reward_shape": ({"source": rgb(7), "edited": rgb(8), "rewards": {"instruction_following": {"score": 4, "feedback": "x"}}},
                         "bad_reward", "lacks the perspective(s) detail_preserving, generation_quality"),
        "reward_range": ({"source": rgb(7), "edited": rgb(8), "rewards": {**GOOD_REWARDS, "detail_preserving": {"score": 9, "feedback": "x"}}},
                         "bad_reward", "detail_preserving.score must be from 0 to 5, got 9"),
    }


@pytest.mark.parametrize("bad_id", list(bad_items()))
def test_fail_reports_the_item_and_publishes_nothing(tmp_path, bad_id):
    item, kind, words = bad_items()[bad_id]
    folder = write_manifest(tmp_path / "src", {"good": {"source": rgb(1), "edited": rgb(2)}, bad_id: item})
    with pytest.raises(ItemError) as caught:
        build_dataset("manifest", folder, tmp_path / "out", progress=False)
    assert caught.value.item_id == bad_id and caught.value.kind == kind
    assert words in str(caught.value) and f"item {bad_id!r}" in str(caught.value)
    assert "stopped after 1 good item(s) and published nothing" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_fail_leaves_an_existing_folder_as_it_was(tmp_path):
    good = write_manifest(tmp_path / "good", {"a": {"source": rgb(1), "edited": rgb(2)}})
    build_dataset("manifest", good, tmp_path / "out", progress=False)
    before = (tmp_path / "out" / "README.md").read_text()
    bad = write_manifest(tmp_path / "bad", {"b": {"source": rgb(1), "edited": rgb(2)}, "c": {"source": b"", "edited": rgb(2)}})
    for config in ("default", "other"):
        with pytest.raises(ItemError):
            build_dataset("manifest", bad, tmp_path / "out", config=config, progress=False)
    assert (tmp_path / "out" / "README.md").read_text() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".editforge.lock", "README.md", "data"]
    assert list(rows_of(tmp_path / "out", tmp=tmp_path)) == ["a"]


def test_skip_leaves_bad_items_out_and_the_card_says_why(tmp_path):
    bad = bad_items()
    items = {"good1": {"source": rgb(1), "edited": rgb(2), "rewards": GOOD_REWARDS}}
    items.update({bad_id: item for bad_id, (item, _, _) in bad.items()})
    items["good2"] = {"source": rgb(3), "edited": rgb(4)}
    folder = write_manifest(tmp_path / "src", items)
    report = build_dataset("manifest", folder, tmp_path / "out", on_error="skip", progress=False)

    assert report.num_examples == 2
    assert {s["id"]: s["kind"] for s in report.skipped} == {k: kind for k, (_, kind, _) in bad.items()}
    assert sorted(rows_of(tmp_path / "out", tmp=tmp_path)) == ["good1", "good2"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"Skipped: {len(bad)} (" in card
    assert "`corrupt_image` 2" in card and "`size_mismatch` 2" in card and "`bad_reward` 2" in card
    for bad_id, (_, _, words) in bad.items():
        assert f"`{bad_id}`" in card and words in card, bad_id
    assert "| `default` | `train` | manifest | 2 | 9 |" in card


def test_rewardedit20k_bad_entries_and_folders(tmp_path):
    release = tmp_path / "release"
    layouts.write_rewardedit20k(release, n=5)
    scores = json.loads((release / "RewardEdit_20K.json").read_text())
    names = sorted(scores)
    scores[names[0]] = scores[names[0]][:2]                                   # two judgements, not three
    scores[names[1]][2] = {"Score": 3}                                        # no "Negative Prompt"
    scores["9999999"] = scores[names[4]]                                      # no such folder
    seed = next(p.name.split("_")[0] for p in (release / names[2]).glob("*_0.jpg"))
    (release / names[2] / f"{seed}_1.jpg").unlink()                           # half a pair
    for side in ("0", "1"):                                                   # a second pair
        (release / names[3] / f"123_{side}.jpg").write_bytes(layouts.encode(layouts.pixels(9), "JPEG"))
    (release / "RewardEdit_20K.json").write_text(json.dumps(scores))

    with pytest.raises(ItemError, match=rf"item '{names[0]}'.*expected a list of 3"):
        build_dataset("rewardedit20k", release, tmp_path / "out", progress=False)
    report = build_dataset("rewardedit20k", release, tmp_path / "out", on_error="skip", progress=False)
    reasons = {s["id"]: (s["kind"], s["reason"]) for s in report.skipped}
    assert reasons[names[0]][0] == "bad_reward" and "got a list of 2" in reasons[names[0]][1]
    assert reasons[names[1]][0] == "bad_reward" and "entry 2 (generation_quality)" in reasons[names[1]][1]
    assert reasons[names[2]][0] == "missing_file" and f"found only {seed}_0.jpg" in reasons[names[2]][1]
    assert reasons[names[3]][0] == "ambiguous" and "holds 2 image pairs" in reasons[names[3]][1]
    assert reasons["9999999"][0] == "missing_file"
    assert report.num_examples == 1 and sorted(rows_of(tmp_path / "out", tmp=tmp_path)) == [names[4]]


def test_parquet_bad_cells_and_labels(tmp_path):
    layouts.write_pickapic(tmp_path / "pickapic", labels=(1.0, 0.25, 0.0))
    table = pq.read_table(tmp_path / "pickapic/data/train-00000-of-00001.parquet")
    jpg_1 = table.column("jpg_1").to_pylist()
    jpg_1[2] = jpg_1[2][:40]  # a truncated JPEG
    table = table.set_column(table.schema.get_field_index("jpg_1"), "jpg_1", [jpg_1])
    pq.write_table(table, tmp_path / "pickapic/data/train-00000-of-00001.parquet")
    report = build_dataset("pickapic", tmp_path / "pickapic", tmp_path / "out", on_error="skip", progress=False)
    assert {s["id"]: (s["kind"], s["field"]) for s in report.skipped} == {
        "77001": ("bad_field", "label_0"), "77002": ("corrupt_image", "image_1"),
    }
    assert report.num_examples == 1


def test_bad_sources_and_arguments_are_one_clear_error(tmp_path):
    layouts.write_omniedit(tmp_path / "omni", n=1)
    with pytest.raises(UsageError, match="lacks the column"):
        build_dataset("magicbrush", tmp_path / "omni", tmp_path / "out", progress=False)
    with pytest.raises(UsageError, match="no Parquet files matching 'data/dev-\\*.parquet'"):
        build_dataset("omniedit", tmp_path / "omni", tmp_path / "out", source_files="data/dev-*.parquet", progress=False)
    with pytest.raises(UsageError, match="rewards_from does not apply to this format"):
        build_dataset("omniedit", tmp_path / "omni", tmp_path / "out", rewards_from="ground_truth", progress=False)
    (tmp_path / "omni/data/train-00000-of-00001.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UsageError, match="not a readable Parquet file"):
        build_dataset("omniedit", tmp_path / "omni", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()

    folder = write_manifest(tmp_path / "src", {"x": {"source": b"", "edited": rgb(1)}})
    result = subprocess.run(
        [sys.executable, "-m", "editforge", "build-dataset", "--format", "manifest", str(folder), str(tmp_path / "out2"), "--no-progress"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("editforge build-dataset: error: item 'x' (source_image): the image file is empty (0 bytes)")
    assert not (tmp_path / "out2").exists()


def test_after_a_failure_a_rerun_continues_after_the_complete_shards(tmp_path):
    items = {f"item{i:03d}": {"source": rgb(i), "edited": rgb(i + 1)} for i in range(150)}
    items["item150"] = {"source": b"", "edited": rgb(2)}
    folder = write_manifest(tmp_path / "src", items)
    with pytest.raises(ItemError, match=r"stopped after 150 good item\(s\) and published nothing; the 100 item\(s\) "
                                        r"in complete shards are kept and a rerun continues after them"):
        build_dataset("manifest", folder, tmp_path / "out", max_shard_size="1KB", progress=False)
    assert not (tmp_path / "out" / "README.md").exists()
    report = build_dataset("manifest", folder, tmp_path / "out", max_shard_size="1KB", on_error="skip", progress=False)
    assert (report.resumed_from, report.num_examples, report.num_skipped) == (100, 150, 1)
    assert len(rows_of(tmp_path / "out", tmp=tmp_path)) == 150
