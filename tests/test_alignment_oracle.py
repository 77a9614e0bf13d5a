"""The alignment oracle of the synthetic world: prompts read back, images judged from pixels only.

Round trips (a scene's caption or prompt against its own image: 5, "None") at the world's sizes
and aspect ratios; each kind of mismatch lowers the score and is named; the prompt writer's base
and contrasting prompts all parse, and an image made for a base prompt scores lower against each
of its contrasting variants (InstructEngine's pair check); unreadable prompts are refused.
"""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from editforge.dataset_builders.annotation.responders import ChatRequest
from editforge.dataset_builders.prompts.request_format import BASE, PromptFormat
from editforge.dataset_builders.prompts.synthetic_writer import (
    STYLED_SHARE,
    SyntheticPromptWriter,
    contrasting_prompt,
    world_prompt,
)
from editforge.dataset_builders.prompts.taxonomy import load_taxonomy
from editforge.dataset_builders.synthetic import OracleError, judge_alignment, parse_prompt, render_prompt
from editforge.dataset_builders.synthetic.alignment import alignment_score
from editforge.dataset_builders.synthetic.edits import STYLES, styled_caption
from editforge.dataset_builders.synthetic.world import Scene, Shape, caption, random_scene, render
from editforge.vocabulary import ALIGNMENT, CONTRAST_AXES, MAX_REWARD, MIN_REWARD, NO_FAILURE

STYLE_CHOICES = (None, *STYLES)


def styled(scene, style, width=32, height=32):
    image = render(scene, width, height)
    return image if style is None else STYLES[style].apply(image)


def judged(prompt, image):
    out = judge_alignment(prompt, image)
    assert set(out) == {ALIGNMENT} and set(out[ALIGNMENT]) == {"score", "feedback"}
    score = out[ALIGNMENT]["score"]
    assert type(score) is int and MIN_REWARD <= score <= MAX_REWARD
    return score, out[ALIGNMENT]["feedback"]


def content(scene):
    return scene.background, [(s.colour, s.kind, s.slot) for s in scene.shapes]


# --- reading prompts ---------------------------------------------------------------------


def test_prompts_read_back_into_the_scene_and_style_they_describe():
    rng = np.random.default_rng(0)
    for index in range(300):
        scene = random_scene(rng, n_shapes=int(rng.integers(0, 5)))
        style = STYLE_CHOICES[index % len(STYLE_CHOICES)]
        forms = [caption(scene) if style is None else None, styled_caption(scene, style)]
        if scene.shapes:
            forms.append(world_prompt(scene, style))
        for text in filter(None, forms):
            read, read_style = parse_prompt(text)
            assert (content(read), read_style) == (content(scene), style), text
            # case, spacing, a full stop, "color", "an" and hyphens are not significant
            loose = "  " + text.upper().replace("COLOURS", "colors").replace(" TOP ", " top-") + ". "
            assert parse_prompt(loose) == (read, read_style), loose


def test_the_writer_prompt_form_and_empty_scenes():
    scene, style = parse_prompt("two shapes: a red circle at the top left and a blue square at the bottom right "
                                "on a white background, at night")
    assert scene == Scene("white", (Shape("circle", "red", 0), Shape("square", "blue", 3))) and style == "night"
    assert parse_prompt("an empty navy background") == (Scene("navy"), None)
    assert parse_prompt("no shapes: an empty beige background as a photo negative") == (Scene("beige"), "negative")
    # any order of the shapes, "in the ... corner", a serial comma
    scene, _ = parse_prompt("a pink triangle in the bottom right corner, a green circle at the top left, and "
                            "an orange square at the top right on a grey background")
    assert content(scene) == ("gray", [("green", "circle", 0), ("orange", "square", 1), ("pink", "triangle", 3)])


@pytest.mark.parametrize("prompt, problem", [
    ("", "empty"),
    ("a red circle at the top left", "no background"),
    ("a red circle at the top left on a white background, in oil paint", "unknown style 'in oil paint'"),
    ("five shapes: a red circle at the top left on a white background", "unknown count 'five'"),
    ("several things: a red circle at the top left on a white background", "cannot read the count 'several things'"),
    ("two shapes: a red circle at the top left on a white background", "the count says two but 1 shape"),
    ("a red circle at the top left on a purple background", "unknown background colour 'purple'"),
    ("a magenta circle at the top left on a white background", "unknown shape colour 'magenta'"),
    ("a big red circle at the top left on a white background", "unknown shape colour 'big red'"),
    ("a red star at the top left on a white background", "unknown shape kind 'star'"),
    ("a red circle at the middle on a white background", "unknown position 'middle'"),
    ("a red circle on a white background", "cannot read the shape 'a red circle'"),
    ("a red circle at the top left and a blue square at the top left on a white background",
     "two shapes at the top left"),
    ("a cat on a white background", "cannot read the shape 'a cat'"),
    ("a cat on a sofa", "no background"),
])
def test_unreadable_prompts_are_refused_naming_the_problem(prompt, problem):
    image = render(Scene("white", (Shape("circle", "red", 0),)), 32, 32)
    with pytest.raises(OracleError, match="cannot read the prompt") as err:
        judge_alignment(prompt, image)
    assert problem in str(err.value)
    with pytest.raises(OracleError):
        parse_prompt(prompt)


def test_non_text_prompts_and_non_rgb_images_are_refused():
    with pytest.raises(OracleError, match="must be text"):
        parse_prompt(None)
    with pytest.raises(OracleError, match="RGB"):
        judge_alignment("an empty white background", np.zeros((32, 32), np.uint8))


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(32, 32), (48, 32), (32, 48), (96, 64), (16, 16), (24, 16)])
def test_an_image_matches_its_own_prompt(size):
    """Every scene scores 5 against its caption or prompt (sizes under 32 px are enlarged first)."""
    rng = np.random.default_rng(size[0] * 100 + size[1])
    n = 200 if size == (32, 32) else 80
    failures = []
    for index in range(n):
        scene = random_scene(rng)
        style = STYLE_CHOICES[index % len(STYLE_CHOICES)]
        prompt = world_prompt(scene, style) if index % 2 else styled_caption(scene, style)
        result = judged(prompt, styled(scene, style, *size))
        if result != (5, NO_FAILURE):
            failures.append((prompt, result))
    assert failures == []


def test_judges_pil_images_read_back_from_png(tmp_path):
    prompt = "three shapes: a yellow triangle at the top right, an orange circle at the bottom left and a cyan " \
             "square at the bottom right on a navy background, in a warm vintage style"
    Image.fromarray(render_prompt(prompt, 48, 32)).save(tmp_path / "image.png")
    with Image.open(tmp_path / "image.png") as image:
        assert judged(prompt, image) == (5, NO_FAILURE)
    assert judge_alignment(prompt, render_prompt(prompt)) == judge_alignment(prompt, render_prompt(prompt))


# --- mismatches --------------------------------------------------------------------------

PROMPT_SCENE = Scene("white", (Shape("circle", "red", 0, 0.6, 0.2, -0.1), Shape("square", "blue", 3, 0.5, -0.3, 0.2)))
PROMPT = "two shapes: a red circle at the top left and a blue square at the bottom right on a white background"
RED, BLUE = PROMPT_SCENE.shapes


@pytest.mark.parametrize("name, scene, style, score, phrases", [
    ("wrong colour", PROMPT_SCENE.with_shape(replace(RED, colour="green")), None, 3,
     ["the circle at the top left is green, not red"]),
    ("wrong kind", PROMPT_SCENE.with_shape(replace(RED, kind="triangle")), None, 3,
     ["the red shape at the top left is a triangle, not a circle"]),
    ("wrong shape", PROMPT_SCENE.with_shape(replace(RED, kind="triangle", colour="orange")), None, 3,
     ["an orange triangle at the top left instead of the red circle"]),
    ("wrong slot", PROMPT_SCENE.without_slot(0).with_shape(replace(RED, slot=1)), None, 3,
     ["the red circle is at the top right, not the top left"]),
    ("missing shape", PROMPT_SCENE.without_slot(3), None, 2,
     ["missing the blue square at the bottom right", "one shape, not two"]),
    ("extra shape", PROMPT_SCENE.with_shape(Shape("triangle", "green", 2)), None, 4,
     ["an extra green triangle at the bottom left", "three shapes, not two"]),
    ("wrong background", replace(PROMPT_SCENE, background="black"), None, 3,
     ["the background is black, not white"]),
    ("unasked style", PROMPT_SCENE, "night", 3, ["the image is at night but the prompt asks for no style"]),
    ("places swapped", Scene("white", (replace(BLUE, slot=0), replace(RED, slot=3))), None, 2,
     ["the red circle is at the bottom right, not the top left",
      "the blue square is at the top left, not the bottom right"]),
    ("nothing there", Scene("gray"), "pastel", 0,
     ["missing the red circle at the top left", "missing the blue square at the bottom right",
      "no shapes, not two", "the background is gray, not white",
      "the image is in faded pastel colours but the prompt asks for no style"]),
])
def test_each_mismatch_lowers_the_score_and_is_named(name, scene, style, score, phrases):
    assert judged(PROMPT, styled(PROMPT_SCENE, None)) == (5, NO_FAILURE)
    assert judged(PROMPT, styled(scene, style, 48, 32)) == (score, "; ".join(phrases)), name


@pytest.mark.parametrize("scene, style, named", [
    (PROMPT_SCENE.with_shape(replace(RED, colour="green")), None, {"colour": 1}),
    (PROMPT_SCENE.with_shape(replace(RED, kind="triangle")), None, {"kind": 1}),
    (PROMPT_SCENE.with_shape(replace(RED, kind="triangle", colour="orange")), None, {"shape": 1}),
    (Scene("white", (replace(BLUE, slot=0), replace(RED, slot=3))), None, {"place": 2}),
    (PROMPT_SCENE.without_slot(3), None, {"missing": 1, "count": 1}),
    (PROMPT_SCENE.with_shape(Shape("triangle", "green", 2)), None, {"extra": 1, "count": 1}),
    (Scene("gray"), "pastel", {"missing": 2, "count": 1, "background": 1, "style": 1}),
    (PROMPT_SCENE, "night", {"style": 1}),
    (PROMPT_SCENE, None, {}),
])
def test_mismatch_kinds_count_what_the_feedback_names(scene, style, named):
    from editforge.dataset_builders.synthetic.alignment import MISMATCH_KINDS, mismatch_kinds

    feedback = judged(PROMPT, styled(scene, style, 48, 32))[1]
    assert mismatch_kinds(feedback) == {kind: named.get(kind, 0) for kind in MISMATCH_KINDS}
    assert mismatch_kinds("the image is not at night; the image is in faded pastel colours, not at night") == {
        **dict.fromkeys(MISMATCH_KINDS, 0), "style": 2}
    with pytest.raises(ValueError, match="not a phrase of the alignment oracle: 'a cat'"):
        mismatch_kinds("the background is gray, not white; a cat")


@pytest.mark.parametrize("wanted, shown, phrase", [
    ("night", None, "the image is not at night"),
    ("night", "pastel", "the image is in faded pastel colours, not at night"),
    ("negative", "vintage", "the image is in a warm vintage style, not as a photo negative"),
])
def test_a_wrong_or_missing_style_is_named(wanted, shown, phrase):
    prompt = f"{PROMPT}, {STYLES[wanted].caption_suffix}"
    assert judged(prompt, styled(PROMPT_SCENE, wanted)) == (5, NO_FAILURE)
    assert judged(prompt, styled(PROMPT_SCENE, shown)) == (3, phrase)


def test_the_score_never_rises_as_mismatches_are_added():
    """A four-shape prompt (7 elements) against images with one more element wrong each time."""
    scene = Scene("beige", (Shape("circle", "red", 0), Shape("square", "blue", 1),
                            Shape("triangle", "green", 2), Shape("circle", "pink", 3)))
    prompt = caption(scene)
    steps = [scene, replace(scene, background="navy")]
    for slot in range(4):
        steps.append(steps[-1].with_shape(replace(scene.shape_in(slot), colour="yellow", kind="square")))
    scores = [judged(prompt, styled(s, None))[0] for s in steps]
    scores.append(judged(prompt, styled(steps[-1], "negative"))[0])  # and the style: nothing left but the count
    scores.append(judged(prompt, styled(Scene("navy"), "negative"))[0])  # nothing of the prompt at all
    assert scores == [5, 3, 2, 2, 1, 1, 1, 0]
    assert scores == sorted(scores, reverse=True)
    for elements in range(3, 8):
        rule = [alignment_score(elements, k) for k in range(elements + 1)]
        assert rule[0] == MAX_REWARD and rule[-1] == MIN_REWARD and rule == sorted(rule, reverse=True)
        assert alignment_score(elements, 1, count_only=True) == 4


# --- the prompt writer and InstructEngine's pair check ------------------------------------


def writer_prompts(count=2):
    """{(theme, subtopic): the writer's answer} for every subtopic of the synthetic taxonomy."""
    prompt_format = PromptFormat(count, CONTRAST_AXES)
    writer, answers = SyntheticPromptWriter(), {}
    for theme, subtopic in load_taxonomy("synthetic").subtopics():
        body = {"model": "m", "seed": 3, "messages": prompt_format.messages(theme, subtopic),
                "response_format": prompt_format.response_format}
        answers[theme, subtopic] = writer.respond(ChatRequest.from_body(body))["prompts"]
    return answers


def test_the_writers_prompts_parse_and_each_contrast_scores_lower():
    answers = writer_prompts()
    assert len(answers) >= 40
    lower = {axis: 0 for axis in CONTRAST_AXES}
    total = 0
    for items in answers.values():
        for item in items:
            for text in item.values():
                parse_prompt(text)
            image = render_prompt(item[BASE])
            assert judged(item[BASE], image) == (5, NO_FAILURE), item[BASE]
            total += 1
            for axis in CONTRAST_AXES:
                score, feedback = judged(item[axis], image)
                lower[axis] += score < 5 and feedback != NO_FAILURE
    assert lower == {axis: total for axis in CONTRAST_AXES}


@pytest.mark.parametrize("size", [(32, 32), (48, 32)])
def test_an_image_scores_lower_against_its_contrasting_prompt(size):
    """Random scenes (sizes and offsets drawn as the world draws them), the writer's variants: the
    image made for prompt A scores 5 against A and less against its variant B on every axis."""
    rng = np.random.default_rng(size[0])
    exceptions = {axis: [] for axis in CONTRAST_AXES}
    n = 150
    for _ in range(n):
        scene = random_scene(rng)
        style = str(rng.choice(list(STYLES))) if rng.random() < STYLED_SHARE else None
        prompt = world_prompt(scene, style)
        image = styled(scene, style, *size)
        base_score, _ = judged(prompt, image)
        assert base_score == 5, prompt
        for axis in CONTRAST_AXES:
            variant = contrasting_prompt(rng, axis, scene, style)
            if judged(variant, image)[0] >= base_score:
                exceptions[axis].append((prompt, variant))
    assert exceptions == {axis: [] for axis in CONTRAST_AXES}


@pytest.mark.parametrize("artefact", ["noise", "blur", "blocky"])
def test_mild_artefacts_do_not_change_the_judgement(artefact):
    """Alignment is about content: a mildly noisy, blurry or blocky image still matches its prompt.
    (Strong blur at 32 px rounds triangles into circles for the pixel reader: not asserted.)"""
    from editforge.dataset_builders.synthetic.imperfections import apply_artefact

    rng = np.random.default_rng(7)
    for index in range(40):
        scene = random_scene(rng)
        style = STYLE_CHOICES[index % len(STYLE_CHOICES)]
        image = apply_artefact(rng, styled(scene, style), artefact, "mild")
        assert judged(world_prompt(scene, style), image) == (5, NO_FAILURE)


def test_the_writers_prompt_for_an_empty_scene_reads_back():
    from editforge.dataset_builders.prompts.synthetic_writer import world_prompt
    from editforge.dataset_builders.synthetic.world import Scene

    prompt = world_prompt(Scene("white"), None)
    assert prompt == "no shapes: an empty white background"
    assert judge_alignment(prompt, render_prompt(prompt))["alignment"]["score"] == 5
