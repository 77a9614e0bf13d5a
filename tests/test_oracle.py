"""The oracle judge, from pixels only, agrees with the ground truth."""

import numpy as np
import pytest
from PIL import Image

from editforge.dataset_builders.synthetic import PERSPECTIVES, OracleError, OracleJudge, generate_triplet


def agreement(n, width, height, seed=0, rate=0.5):
    judge = OracleJudge()
    exact = {p: 0 for p in PERSPECTIVES}
    error = {p: 0 for p in PERSPECTIVES}
    for index in range(n):
        item = generate_triplet(seed, index, width, height, imperfect_rate=rate)
        scores = judge.judge(item.source, item.instruction, item.edited)
        for p in PERSPECTIVES:
            exact[p] += scores[p]["score"] == item.ground_truth[p]["score"]
            error[p] += abs(scores[p]["score"] - item.ground_truth[p]["score"])
    return {p: exact[p] / n for p in PERSPECTIVES}, {p: error[p] / n for p in PERSPECTIVES}


def test_500_triplets_at_imperfect_rate_half_agree_with_ground_truth():
    exact, mae = agreement(500, 64, 64)
    for p in PERSPECTIVES:
        assert exact[p] >= 0.95, (p, exact)
        assert mae[p] <= 0.3, (p, mae)


@pytest.mark.parametrize("size", [(160, 96), (32, 32)])
def test_other_sizes_and_aspect_ratios(size):
    exact, mae = agreement(120, *size, seed=1)
    for p in PERSPECTIVES:
        assert exact[p] >= 0.95, (p, exact)


def test_judges_images_read_back_from_png(tmp_path):
    item = generate_triplet(3, 1, 96, 64, imperfect_rate=1.0)
    paths = {}
    for name in ("source", "edited"):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(getattr(item, name)).save(paths[name])
    scores = OracleJudge().judge(Image.open(paths["source"]), item.instruction, Image.open(paths["edited"]))
    assert {p: s["score"] for p, s in scores.items()} == {p: s["score"] for p, s in item.ground_truth.items()}


def test_a_perfect_edit_scores_five_and_an_untouched_image_fails_following():
    item = generate_triplet(0, 2, imperfect_rate=0.0, tasks=("attribute_change",))
    judge = OracleJudge()
    perfect = judge.judge(item.source, item.instruction, item.ideal)
    assert all(perfect[p]["score"] == 5 and perfect[p]["feedback"] == "None" for p in PERSPECTIVES)
    untouched = judge.judge(item.source, item.instruction, item.source)
    assert untouched["instruction_following"]["score"] == 0
    assert "still" in untouched["instruction_following"]["feedback"]
    assert untouched["detail_preserving"]["score"] == 5


def test_model_outputs_of_another_size_are_resized():
    item = generate_triplet(0, 4, 64, 64, imperfect_rate=0.0)
    bigger = np.asarray(Image.fromarray(item.ideal).resize((128, 128), Image.NEAREST))
    scores = OracleJudge().judge(item.source, item.instruction, bigger)
    assert scores["instruction_following"]["score"] == 5


def test_refuses_what_it_cannot_judge():
    item = generate_triplet(0, 0)
    judge = OracleJudge()
    with pytest.raises(OracleError, match="not an instruction of the synthetic world"):
        judge.judge(item.source, "make it look like a van gogh painting", item.edited)
    with pytest.raises(OracleError, match="there is no"):
        judge.judge(item.source, "remove the pink triangle" if "pink triangle" not in item.source_caption
                    else "remove the green square", item.edited)
    with pytest.raises(OracleError, match="RGB image"):
        judge.judge(item.source[..., 0], item.instruction, item.edited)
