"""Rubric validation, image preparation and cache keys: the pieces every judged item goes through."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from editforge.dataset_builders.annotation import (
    MULTI_REWARD,
    VIESCORE_EDIT,
    AnswerCache,
    ImageError,
    InvalidAnswer,
    cache_key,
    get_rubric,
    prepare_image,
)
from editforge.dataset_builders.annotation.images import decode_data_url
from editforge.errors import UsageError

GOOD = {
    "instruction_following": {"feedback": "the circle is green, not blue", "score": 2},
    "detail_preserving": {"feedback": "None", "score": 5},
    "generation_quality": {"feedback": "slight grain", "score": 3},
}


def answer(**changes):
    data = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        perspective, field = path.split("__")
        if value is None:
            del data[perspective][field]
        else:
            data[perspective][field] = value
    return json.dumps(data)


def test_a_valid_multi_reward_answer_gives_the_contract_shape():
    rewards = MULTI_REWARD.parse(json.dumps(GOOD))
    assert rewards == {p: {"score": v["score"], "feedback": v["feedback"]} for p, v in GOOD.items()}
    assert list(rewards["instruction_following"]) == ["score", "feedback"]
    assert MULTI_REWARD.parse(answer(detail_preserving__score=5.0))["detail_preserving"]["score"] == 5


@pytest.mark.parametrize(
    "content, message",
    [
        (answer(instruction_following__score=6), "instruction_following.score: 6 is above the maximum 5"),
        (answer(generation_quality__score=-1), "generation_quality.score: -1 is below the minimum 0"),
        (answer(detail_preserving__score=4.5), "expected an integer, got 4.5"),
        (answer(detail_preserving__score=True), "expected an integer, got true"),
        (answer(detail_preserving__score="5"), 'expected an integer, got "5"'),
        (answer(detail_preserving__feedback=None), "detail_preserving: missing feedback"),
        (answer(detail_preserving__feedback=3), "detail_preserving.feedback: expected a string"),
        (answer(detail_preserving__extra="x"), "detail_preserving: unexpected extra"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "generation_quality"}), "answer: missing generation_quality"),
        ('{"instruction_following": {"score": 5', "answer is not JSON"),
        ("[5, 5, 5]", "answer: expected an object, got list"),
        ("", "empty answer"),
        (None, "empty answer"),
    ],
)
def test_invalid_answers_are_rejected_with_the_reason(content, message):
    with pytest.raises(InvalidAnswer, match=message.replace("(", r"\(").replace(".", r"\.")):
        MULTI_REWARD.parse(content)


def test_viescore_derives_sc_pq_and_o_and_checks_the_0_to_10_range():
    content = {"sc_reasoning": "half done", "editing_success": 6, "over_editing": 9,
               "pq_reasoning": "a little noise", "naturalness": 8, "artifacts": 4}
    rewards = VIESCORE_EDIT.parse(json.dumps(content))
    assert rewards == {"sc": 6.0, "pq": 4.0, "o": pytest.approx(24 ** 0.5), "sc_scores": [6, 9], "pq_scores": [8, 4],
                       "sc_reasoning": "half done", "pq_reasoning": "a little noise"}
    with pytest.raises(InvalidAnswer, match="artifacts: 11 is above the maximum 10"):
        VIESCORE_EDIT.parse(json.dumps({**content, "artifacts": 11}))


def test_schemas_are_strict_structured_outputs():
    for rubric in (MULTI_REWARD, VIESCORE_EDIT):
        fmt = rubric.response_format
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
        schema = fmt["json_schema"]["schema"]
        assert schema["additionalProperties"] is False and schema["required"] == list(schema["properties"])
    with pytest.raises(UsageError, match="unknown rubric 'vibes'; choose one of multi-reward, viescore-edit"):
        get_rubric("vibes")


def png_bytes(size, mode="RGB"):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array.squeeze(), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_small_rgb_files_are_sent_unchanged(tmp_path):
    data = png_bytes((96, 64))
    (tmp_path / "a.png").write_bytes(data)
    prepared = prepare_image(tmp_path / "a.png", max_side=96)
    assert prepared.data == data and prepared.mime == "image/png" and (prepared.width, prepared.height) == (96, 64)
    assert decode_data_url(prepared.data_url).tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_large_images_are_downscaled_keeping_the_aspect_ratio():
    prepared = prepare_image(png_bytes((1000, 400)), max_side=768)
    assert (prepared.width, prepared.height) == (768, 307) and prepared.mime == "image/png"
    assert decode_data_url(prepared.data_url).size == (768, 307)
    assert prepare_image(png_bytes((1000, 400)), max_side=768).data == prepared.data  # deterministic


def test_other_modes_and_in_memory_images_become_rgb_png():
    rgba = prepare_image(png_bytes((20, 10), "RGBA"))
    assert rgba.mime == "image/png" and decode_data_url(rgba.data_url).mode == "RGB"
    array = np.zeros((8, 12, 3), np.uint8)
    from_array = prepare_image(array)
    assert (from_array.width, from_array.height) == (12, 8)
    assert prepare_image(Image.fromarray(array)).data == from_array.data
    assert prepare_image({"bytes": png_bytes((5, 5)), "path": None}).data == png_bytes((5, 5))


def test_unreadable_images_raise_image_error(tmp_path):
    with pytest.raises(ImageError, match="No such file"):
        prepare_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not a readable image"):
        prepare_image(b"\x89PNG\r\n\x1a\n broken")
    truncated = png_bytes((64, 64))[:-200]
    with pytest.raises(ImageError, match="not a readable image"):
        prepare_image(truncated)


def test_the_cache_key_covers_model_rubric_version_instruction_and_both_images():
    base = ("gpt-4o", "multi-reward", "1", "make the red circle blue", b"source", b"edited")
    key = cache_key(*base)
    assert key == cache_key(*base) and len(key) == 64
    for i, changed in enumerate(["gpt-4o-mini", "viescore-edit", "2", "make the red circle green", b"source2", b"edited2"]):
        assert cache_key(*base[:i], changed, *base[i + 1:]) != key
    # parts are length-prefixed: moving bytes between fields changes the key
    assert cache_key("ab", "c", "1", "i", b"s", b"e") != cache_key("a", "bc", "1", "i", b"s", b"e")


def test_answers_survive_reopening_the_cache(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    scope = dict(model="m", rubric="multi-reward", rubric_version="1")
    with AnswerCache(path) as cache:
        cache.put("k1", rewards=GOOD, prompt_tokens=800, completion_tokens=40, **scope)
        cache.add_batch("batch_1", keys=["k2"], input_file=None, **scope)
    with AnswerCache(path) as cache:
        stored = cache.get("k1")
        assert stored.rewards == GOOD and (stored.prompt_tokens, stored.completion_tokens) == (800, 40)
        assert "k1" in cache and "k2" not in cache and cache.get("k2") is None and len(cache) == 1
        assert [b.id for b in cache.open_batches(**scope)] == ["batch_1"]
        assert cache.open_batches(model="other", rubric="multi-reward", rubric_version="1") == []
        cache.close_batch("batch_1")
        assert cache.open_batches(**scope) == []


def test_jpegs_pass_through_unless_exif_turns_them():
    array = np.zeros((40, 60, 3), np.uint8)
    array[:, :30] = 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    upright = prepare_image(buffer.getvalue())
    assert upright.data == buffer.getvalue() and upright.mime == "image/jpeg" and (upright.width, upright.height) == (60, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    turned = io.BytesIO()
    Image.fromarray(array).save(turned, format="JPEG", exif=exif.tobytes())
    prepared = prepare_image(turned.getvalue())
    assert prepared.mime == "image/png" and (prepared.width, prepared.height) == (40, 60)


@pytest.mark.parametrize(
    "completion, message",
    [
        ({"choices": []}, "no choices"),
        ({"choices": {"0": {}}}, "no choices"),
        ([1, 2], "no choices"),
        ({"choices": [{"message": "five"}]}, "no message"),
        ({"choices": [{"message": {"content": {"instruction_following": 5}}}]}, "expected the answer as text, got dict"),
        ({"choices": [{"message": {"content": None, "refusal": "I can't judge this"}}]}, "refused: I can't judge this"),
        ({"choices": [{"finish_reason": "length", "message": {"content": "{\"instr"}}]}, "cut off"),
    ],
)
def test_malformed_completions_are_invalid_answers_not_crashes(completion, message):
    from editforge.dataset_builders.annotation import JudgeClient, Usage

    client = JudgeClient("multi-reward", model="m", base_url="http://127.0.0.1:9/v1", api_key="k")
    with pytest.raises(InvalidAnswer, match=message):
        client.rewards_of(completion)
    assert Usage.of(completion) == Usage()
    assert Usage.of({"usage": {"prompt_tokens": "12", "completion_tokens": -3}}) == Usage()
    assert Usage.of({"usage": {"prompt_tokens": 12, "completion_tokens": 3}}) == Usage(12, 3)
