"""The synthetic world: deterministic, any size, every task, masks and imperfections as promised."""

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editforge.dataset_builders.synthetic import (
    STYLES,
    TASKS,
    generate_triplet,
    instruction_text,
    parse_instruction,
    write_synthetic_dataset,
)
from editforge.dataset_builders.synthetic.edits import TEMPLATES, Edit, apply_edit, random_edit
from editforge.dataset_builders.synthetic.world import SHAPE_COLOURS, SHAPE_KINDS, random_scene, render


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_gives_identical_bytes_and_different_seeds_differ(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", n=20, seed=7, imperfect_rate=0.5, progress=False).parent
    b = write_synthetic_dataset(tmp_path / "b", n=20, seed=7, imperfect_rate=0.5, progress=False).parent
    c = write_synthetic_dataset(tmp_path / "c", n=20, seed=8, imperfect_rate=0.5, progress=False).parent
    assert folder_digest(a) == folder_digest(b)
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
    assert folder_digest(a) != folder_digest(c)
    first_a = np.asarray(Image.open(a / "images" / "synth-7-000000_source.png"))
    first_c = np.asarray(Image.open(c / "images" / "synth-8-000000_source.png"))
    assert not np.array_equal(first_a, first_c)


def test_items_do_not_depend_on_n():
    for index in range(5):
        assert np.array_equal(generate_triplet(1, index).edited, generate_triplet(1, index).edited)


@pytest.mark.parametrize("size", [(64, 64), (160, 96), (48, 120), (33, 17)])
def test_any_size_and_aspect_ratio(size):
    width, height = size
    item = generate_triplet(0, 3, width, height, imperfect_rate=0.0)
    for image in (item.source, item.edited, item.ideal):
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert item.mask is None or item.mask.shape == (height, width)


def test_scenes_have_one_to_four_unique_shapes_and_enough_variety():
    rng = np.random.default_rng(0)
    counts, colours, kinds = Counter(), set(), set()
    for _ in range(300):
        scene = random_scene(rng)
        counts[len(scene.shapes)] += 1
        pairs = [(s.colour, s.kind) for s in scene.shapes]
        assert len(pairs) == len(set(pairs))
        colours |= {s.colour for s in scene.shapes}
        kinds |= {s.kind for s in scene.shapes}
    assert set(counts) == {1, 2, 3, 4}
    assert len(colours) >= 6 and kinds >= {"circle", "square", "triangle"}


def test_every_task_occurs_with_captions():
    tasks = Counter()
    for index in range(120):
        item = generate_triplet(2, index)
        tasks[item.task] += 1
        assert item.source_caption and item.target_caption
        if item.task != "style_change":
            assert item.source_caption != item.target_caption
    assert set(tasks) == set(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_mask_covers_exactly_what_the_ideal_edit_changes(task):
    for index in range(40):
        item = generate_triplet(5, index, 96, 64, imperfect_rate=0.0, tasks=(task,))
        changed = np.any(item.source != item.ideal, axis=-1)
        if task == "style_change":
            assert item.mask is None
            continue
        assert item.mask is not None
        assert not np.any(changed & ~item.mask), "the ideal edit changed pixels outside the mask"
        assert changed.any()
        assert np.array_equal(item.edited, item.ideal)  # no imperfections at rate 0


def test_ground_truth_follows_the_applied_failures():
    by_perspective = Counter()
    imperfect = 0
    n = 600
    for index in range(n):
        item = generate_triplet(11, index, imperfect_rate=0.5)
        imperfect += bool(item.failures)
        gt = item.ground_truth
        for perspective, judgement in gt.items():
            assert 0 <= judgement["score"] <= 5
            assert (judgement["score"] == 5) == (judgement["feedback"] == "None"), (perspective, judgement)
        failed = {f.split(":")[0] for f in item.failures}
        # Editing the wrong object, or adding at the wrong place, also disturbs the rest.
        if any(f.endswith(("wrong_object", "wrong_position")) for f in item.failures):
            failed.add("detail_preserving")
            assert gt["detail_preserving"]["score"] < 5
        for perspective in gt:
            if perspective not in failed:
                assert gt[perspective]["score"] == 5, (item.instruction, item.failures, gt)
            else:
                by_perspective[perspective] += 1
                assert gt[perspective]["score"] < 5, (item.instruction, item.failures, gt)
        if not item.failures:
            assert np.array_equal(item.edited, item.ideal)
    assert abs(imperfect / n - 0.5) < 0.07
    assert min(by_perspective.values()) > 0.1 * n


def test_failure_texts_read_like_an_annotator():
    texts = [generate_triplet(4, i, imperfect_rate=1.0).ground_truth for i in range(200)]
    feedback = [j["feedback"] for gt in texts for j in gt.values() if j["score"] < 5]
    assert any(", not " in f for f in feedback)  # "the circle is green, not red"
    assert any("moved" in f for f in feedback)
    assert any("blurry" in f or "noise" in f or "blocky" in f for f in feedback)
    assert not any(" a orange" in f or " a a" in f for f in feedback)


def test_every_phrasing_parses_back():
    rng = np.random.default_rng(3)
    for _ in range(200):
        scene = random_scene(rng)
        edit = random_edit(rng, scene)
        for phrasing in range(6):
            assert parse_instruction(instruction_text(edit, phrasing)) == edit
    assert parse_instruction("Invert the colors.") == Edit(task="style_change", style="negative")
    assert len(STYLES) >= 3 and len(TEMPLATES) == 5


def test_styles_are_global_and_invertible():
    scene = random_scene(np.random.default_rng(1), 3)
    image = render(scene, 64, 64)
    for name, style in STYLES.items():
        styled = style.apply(image)
        assert styled.shape == image.shape and not np.array_equal(styled, image)
        target, applied = apply_edit(scene, Edit(task="style_change", style=name))
        assert applied == name and target == scene
    assert len(SHAPE_COLOURS) >= 6 and len(SHAPE_KINDS) >= 3


def test_instruction_failures_can_be_restricted_to_some_kinds():
    kinds = Counter()
    for index in range(300):
        item = generate_triplet(3, index, imperfect_rate=1.0, failure_weights={"instruction_following": 1.0},
                                instruction_failure_kinds=("no_change",))
        kinds.update(f.split(":")[1] for f in item.failures if f.startswith("instruction_following:"))
        if "instruction_following:no_change" in item.failures:
            assert item.ground_truth["instruction_following"]["score"] == 0
    assert set(kinds) == {"no_change"} and kinds["no_change"] > 200
    with pytest.raises(ValueError, match=r"unknown instruction failure\(s\) \['melted'\]"):
        generate_triplet(3, 0, instruction_failure_kinds=("melted",))
