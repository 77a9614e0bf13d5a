"""The alignment oracle of the synthetic world: does a generated image show what its prompt asks for?

It stands in for the large multimodal model that InstructEngine (arXiv 2504.10329) asks, with
rules, whether a text-to-image output matches its prompt, and answers the ``t2i-alignment``
rubric (:mod:`editforge.dataset_builders.annotation.rubrics`) from pixels alone: the prompt is
read back into the content it asks for (:func:`parse_prompt`), the image into the content it
shows (:func:`~.oracle.read_image`, the edit oracle's pixel reader), and the two are compared
(:func:`judge_alignment`).

Prompts (:func:`parse_prompt`) are the world's captions and the prompt writer's forms
(:mod:`editforge.dataset_builders.prompts.synthetic_writer`)::

    [<count> shape(s): ]<shapes> on a <background> background[, <style suffix>]
    [<count> shapes: ]an empty <background> background[, <style suffix>]

with ``<shapes>`` a list ("x", "x and y", "x, y and z") of ``a <colour> <kind> at the <slot>``.
Case, white space, a final full stop, "an"/"a", "color"/"colour", "grey"/"gray", hyphens
("top-left"), "in the <slot> [corner]" for "at the <slot>" and a comma before the style suffix are
not significant. Anything else (an unknown word, a shape without a place, two shapes in one slot,
a count word that disagrees with the shapes listed) raises :class:`~.oracle.OracleError` naming
what could not be read: the oracle never guesses.

Elements and score. A prompt with ``n`` shapes asks for ``n + 3`` elements: each shape (its
colour, kind and slot, all three), the number of shapes, the background and the style (no style
is an element too: a restyled image does not match an unstyled prompt). A shape is there when the
image holds a shape of its colour and kind in its slot. With ``k`` elements mismatched and
``m = n + 3 - k`` matched, the score follows the t2i-alignment rubric's scale:

    5  k = 0: every element as asked
    4  k = 1 and that element is the count: everything asked is there, plus unasked shapes
    3  k = 1 otherwise: one element wrong
    2  k >= 2 and at least half of the elements match: several elements wrong
    1  fewer than half match, at least one: little of the prompt is there
    0  m = 0: nothing of the prompt is there

so, for a given prompt, the score never rises as mismatches are added, and it is 5 only when
nothing is wrong: an image made for a prompt scores lower against any prompt that differs from it
in a visible element (InstructEngine's pair check). A missing shape is two mismatches (the shape
and the count); a shape in the wrong slot is one (the count still holds).

Feedback is :data:`~editforge.vocabulary.NO_FAILURE` when nothing is wrong, else one short phrase
per mismatch, joined by "; ": "missing the red circle at the top left", "the red circle is at the
bottom right, not the top left", "the circle at the top left is blue, not red", "the red shape at
the top left is a square, not a circle", "a blue square at the top left instead of the red
circle", "an extra green square at the bottom left", "three shapes, not two", "the background is
black, not white", "the image is not at night", "the image is at night, not in faded pastel
colours", "the image is at night but the prompt asks for no style".

Image sizes. The reader is reliable (tests/test_alignment_oracle.py and tests/test_oracle.py) on
clean images whose shorter side is 30 px or more, any aspect ratio; below that its 3x3 median
filter rounds small triangles into circles. A smaller image is therefore first enlarged (nearest
neighbour, an integer factor) until its shorter side is at least ``UPSCALE_TO`` px, which keeps
its hard edges; noise in such a tiny image is then no longer filtered out. Mild noise, blur and
blockiness do not change a judgement at 32 px; strong blur there (sigma 1.2 px) rounds most
triangles into circles, which the judgement then names, as it names anything it reads wrong.

Everything is deterministic: the same prompt and pixels always give the same judgement.
"""

from __future__ import annotations

import re

import numpy as np

from editforge.vocabulary import ALIGNMENT, MAX_REWARD, MIN_REWARD, NO_FAILURE

from .edits import STYLES
from .oracle import OracleError, _as_array, read_image
from .world import BACKGROUND_COLOURS, SHAPE_COLOURS, SHAPE_KINDS, SLOT_NAMES, Scene, Shape, render, with_articles

# Count words of the prompts (the writer's "one".."four"; "no"/"zero" for an empty scene).
COUNT_WORDS = ("zero", "one", "two", "three", "four")
_COUNT_OF = {**{w: n for n, w in enumerate(COUNT_WORDS)}, "no": 0, **{str(n): n for n in range(len(COUNT_WORDS))}}

# Images whose shorter side is under MIN_READ_SIDE are enlarged to a shorter side >= UPSCALE_TO.
MIN_READ_SIDE = 32
UPSCALE_TO = 64

_SUFFIX_STYLE = {style.caption_suffix: name for name, style in STYLES.items()}
_SHAPE = re.compile(r"a (.+) (\S+) (?:at|in) the (.+?)(?: corner)?")


def _normalize(text: str) -> str:
    text = " ".join(text.strip().lower().replace("-", " ").split()).rstrip(".!,; ")
    text = text.replace("color", "colour").replace("grey", "gray")
    return re.sub(r"\ban\b", "a", text)


def _known(kind: str, word: str, names) -> str:
    return f"unknown {kind} {word!r} (known: {', '.join(names)})"


def parse_prompt(text: str) -> tuple[Scene, str | None]:
    """The content a prompt asks for: ``(scene, style or None)``.

    The scene's shapes are in slot order, centred at the world's default size (a prompt says
    nothing of sizes and offsets). :class:`~.oracle.OracleError` when the prompt is not one of
    the world's forms (see the module docstring), naming what could not be read.
    """
    if not isinstance(text, str):
        raise OracleError(f"the prompt must be text, got {type(text).__name__}")

    def fail(what: str):
        raise OracleError(f"cannot read the prompt {text!r}: {what}")

    normalized = _normalize(text)
    if not normalized:
        raise OracleError("cannot read the prompt: it is empty")

    # The style suffix: whatever follows the last "background".
    match = re.fullmatch(r"(.*\bbackground)(?:,? (.*))?", normalized)
    if match is None:
        fail("no background (expected '... on a <colour> background')")
    body, tail = match.group(1), (match.group(2) or "").strip(" ,")
    style = None
    if tail:
        if tail not in _SUFFIX_STYLE:
            fail(_known("style", tail, _SUFFIX_STYLE))
        style = _SUFFIX_STYLE[tail]

    # The count prefix.
    count = None
    if ":" in body:
        prefix, body = (part.strip() for part in body.split(":", 1))
        counted = re.fullmatch(r"(\S+) shapes?", prefix)
        if counted is None:
            fail(f"cannot read the count {prefix!r} (expected '<number> shapes:')")
        if counted.group(1) not in _COUNT_OF:
            fail(f"unknown count {counted.group(1)!r} (a scene holds {', '.join(COUNT_WORDS)} shapes)")
        count = _COUNT_OF[counted.group(1)]

    # The shapes and the background.
    empty = re.fullmatch(r"a empty (.+) background", body)
    listed = None if empty else re.fullmatch(r"(.+?) on a (.+) background", body)
    if empty is None and listed is None:
        fail("cannot find the shapes and the background (expected '<shapes> on a <colour> background' "
             "or 'an empty <colour> background')")
    background = (empty or listed).group(1 if empty else 2)
    if background not in BACKGROUND_COLOURS:
        fail(_known("background colour", background, BACKGROUND_COLOURS))

    shapes: list[Shape] = []
    items = [] if empty else re.split(r",? and |, ", listed.group(1))
    for item in items:
        shape = _SHAPE.fullmatch(item.strip())
        if shape is None:
            fail(f"cannot read the shape {item!r} (expected 'a <colour> <kind> at the <position>')")
        colour, kind, slot = shape.groups()
        if colour not in SHAPE_COLOURS:
            fail(_known("shape colour", colour, SHAPE_COLOURS))
        if kind not in SHAPE_KINDS:
            fail(_known("shape kind", kind, SHAPE_KINDS))
        if slot not in SLOT_NAMES:
            fail(_known("position", slot, SLOT_NAMES))
        index = SLOT_NAMES.index(slot)
        if any(s.slot == index for s in shapes):
            fail(f"two shapes at the {slot} (a position holds one shape)")
        shapes.append(Shape(kind=kind, colour=colour, slot=index))
    if count is not None and count != len(shapes):
        fail(f"the count says {COUNT_WORDS[count]} but {len(shapes)} shape(s) are described")
    return Scene(background=background, shapes=tuple(sorted(shapes, key=lambda s: s.slot))), style


def render_prompt(text: str, width: int = 32, height: int = 32) -> np.ndarray:
    """The world's image of a prompt (HxWx3 uint8): what a perfect generator would draw, shapes
    centred at the default size. OracleError when the prompt cannot be read."""
    scene, style = parse_prompt(text)
    image = render(scene, width, height)
    return image if style is None else STYLES[style].apply(image)


def _readable(image) -> np.ndarray:
    """The image as float pixels, enlarged (nearest neighbour) when too small for the reader."""
    pixels = _as_array(image)
    short = min(pixels.shape[:2])
    if 0 < short < MIN_READ_SIDE:
        factor = -(-UPSCALE_TO // short)
        pixels = np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)
    return pixels


def _count_words(n: int) -> str:
    return "no shapes" if n == 0 else f"{COUNT_WORDS[n]} shape{'s' if n > 1 else ''}"


def _shape_mismatches(expected: Scene, shown: Scene) -> tuple[int, list[str]]:
    """(number of expected shapes not there, phrases naming every shape mismatch and extra)."""
    wanted = {s.slot: (s.colour, s.kind) for s in expected.shapes}
    got = {s.slot: s for s in shown.shapes}
    accounted: set[int] = set()  # slots of the image whose shape a phrase already names
    missing, phrases = 0, []
    for shape in expected.shapes:
        slot, place = shape.slot, SLOT_NAMES[shape.slot]
        here = got.get(slot)
        if here is not None and (here.colour, here.kind) == (shape.colour, shape.kind):
            accounted.add(slot)
            continue
        missing += 1
        elsewhere = next((s for s in shown.shapes if s.slot != slot and s.slot not in accounted
                          and (s.colour, s.kind) == (shape.colour, shape.kind)
                          and wanted.get(s.slot) != (s.colour, s.kind)), None)
        if elsewhere is not None:
            accounted.add(elsewhere.slot)
            phrases.append(f"the {shape.name} is at the {SLOT_NAMES[elsewhere.slot]}, not the {place}")
        elif here is None:
            phrases.append(f"missing the {shape.name} at the {place}")
        else:
            accounted.add(slot)
            if here.kind == shape.kind:
                phrases.append(f"the {shape.kind} at the {place} is {here.colour}, not {shape.colour}")
            elif here.colour == shape.colour:
                phrases.append(f"the {shape.colour} shape at the {place} is a {here.kind}, not a {shape.kind}")
            else:
                phrases.append(f"a {here.name} at the {place} instead of the {shape.name}")
    for shape in shown.shapes:
        if shape.slot not in accounted:
            phrases.append(f"an extra {shape.name} at the {SLOT_NAMES[shape.slot]}")
    return missing, phrases


def _style_phrase(wanted: str | None, shown: str | None) -> str:
    if shown is None:
        return f"the image is not {STYLES[wanted].caption_suffix}"
    if wanted is None:
        return f"the image is {STYLES[shown].caption_suffix} but the prompt asks for no style"
    return f"the image is {STYLES[shown].caption_suffix}, not {STYLES[wanted].caption_suffix}"


# The kinds of mismatch judge_alignment's feedback names, one per phrase template above, and how each reads.
MISMATCH_KINDS = ("colour", "kind", "shape", "place", "missing", "extra", "count", "background", "style")
_MISMATCH_PATTERNS = (
    ("style", re.compile(r"^the image is (not )?.+(but the prompt asks for no style|, not .+)?$")),
    ("background", re.compile(r"^the background is \w+, not \w+$")),
    ("kind", re.compile(r"^the \w+ shape at the .+ is an? \w+, not an? \w+$")),
    ("colour", re.compile(r"^the \w+ at the .+ is \w+, not \w+$")),
    ("place", re.compile(r"^the .+ is at the .+, not the .+$")),
    ("shape", re.compile(r"^an? .+ at the .+ instead of the .+$")),
    ("missing", re.compile(r"^missing the .+ at the .+$")),
    ("extra", re.compile(r"^an extra .+ at the .+$")),
    ("count", re.compile(r"^(no shapes|\w+ shapes?), not \w+$")),
)


def mismatch_kinds(feedback: str) -> dict[str, int]:
    """How many mismatches of each of ``MISMATCH_KINDS`` a ``judge_alignment`` feedback names (all zero
    for ``NO_FAILURE``). ValueError for a phrase that is none of the oracle's."""
    counts = dict.fromkeys(MISMATCH_KINDS, 0)
    if feedback == NO_FAILURE:
        return counts
    for phrase in feedback.split("; "):
        kind = next((k for k, pattern in _MISMATCH_PATTERNS if pattern.match(phrase)), None)
        if kind is None:
            raise ValueError(f"not a phrase of the alignment oracle: {phrase!r}")
        counts[kind] += 1
    return counts


def alignment_score(elements: int, mismatched: int, count_only: bool = False) -> int:
    """The score of an image with ``mismatched`` of a prompt's ``elements`` wrong (see the module
    docstring); ``count_only``: the one mismatch is the number of shapes (extra shapes)."""
    matched = elements - mismatched
    if mismatched == 0:
        return MAX_REWARD
    if matched <= 0:
        return MIN_REWARD
    if mismatched == 1:
        return 4 if count_only else 3
    return 2 if 2 * matched >= elements else 1


def judge_alignment(prompt: str, image) -> dict[str, dict]:
    """``{"alignment": {"score": int 0..5, "feedback": str}}`` of a generated image (HxWx3 array
    or PIL image, any size) against its prompt, from the pixels alone. OracleError when the
    prompt cannot be read or the image is not an RGB image."""
    expected, wanted_style = parse_prompt(prompt)
    read = read_image(_readable(image))
    shown = read.scene

    missing, phrases = _shape_mismatches(expected, shown)
    mismatched = missing
    count_wrong = len(shown.shapes) != len(expected.shapes)
    if count_wrong:
        mismatched += 1
        phrases.append(f"{_count_words(len(shown.shapes))}, not {COUNT_WORDS[len(expected.shapes)]}")
    if shown.background != expected.background:
        mismatched += 1
        phrases.append(f"the background is {shown.background}, not {expected.background}")
    if read.style != wanted_style:
        mismatched += 1
        phrases.append(_style_phrase(wanted_style, read.style))

    elements = len(expected.shapes) + 3
    score = alignment_score(elements, mismatched, count_only=count_wrong and mismatched == 1)
    feedback = with_articles("; ".join(phrases)) if phrases else NO_FAILURE
    return {ALIGNMENT: {"score": int(score), "feedback": feedback}}
