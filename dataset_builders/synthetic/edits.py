"""Edits of the synthetic world: the six task kinds, their instructions and their ideal results.

Tasks follow the edit types of the papers (UltraEdit / OmniEdit): ``attribute_change`` (colour),
``object_removal``, ``object_addition``, ``object_swap``, ``background_change`` and
``style_change`` (a global colour style). Instructions are written from a few phrasings per task
and :func:`parse_instruction` reads every one of them back, which is how the oracle judge knows
what was asked without looking at any hidden metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from .world import (
    BACKGROUND_COLOURS,
    SHAPE_COLOURS,
    SHAPE_KINDS,
    SLOT_NAMES,
    Scene,
    Shape,
    caption,
    dilate_mask,
    random_shape,
    shape_mask,
    with_articles,
)

TASKS = (
    "attribute_change",
    "object_removal",
    "object_addition",
    "object_swap",
    "background_change",
    "style_change",
)

# Tasks whose edit is confined to a region (they get a mask); style changes are global.
LOCAL_TASKS = TASKS[:5]


@dataclass(frozen=True)
class Style:
    """A global colour style: out = clip(scale * in + offset), per RGB channel.

    Every style is an invertible affine colour map, so the judge can undo it and still check
    that the scene's content was preserved.
    """

    name: str
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    phrases: tuple[str, ...]
    caption_suffix: str

    def apply(self, image: np.ndarray) -> np.ndarray:
        out = image.astype(np.float32) * np.asarray(self.scale, np.float32) + np.asarray(self.offset, np.float32)
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    def map_colour(self, rgb) -> np.ndarray:
        out = np.asarray(rgb, np.float32) * np.asarray(self.scale, np.float32) + np.asarray(self.offset, np.float32)
        return np.clip(out, 0, 255)


STYLES: dict[str, Style] = {
    "negative": Style(
        "negative", (-1.0, -1.0, -1.0), (255.0, 255.0, 255.0),
        ("turn it into a photo negative", "invert the colours"), "as a photo negative",
    ),
    "night": Style(
        "night", (0.55, 0.6, 0.8), (0.0, 0.0, 30.0),
        ("make it look like night", "turn it into a night scene"), "at night",
    ),
    "vintage": Style(
        "vintage", (0.95, 0.8, 0.6), (25.0, 20.0, 10.0),
        ("give it a warm vintage look", "make it look vintage"), "in a warm vintage style",
    ),
    "pastel": Style(
        "pastel", (0.55, 0.55, 0.55), (115.0, 115.0, 115.0),
        ("make it look faded and pastel", "wash out the colours"), "in faded pastel colours",
    ),
}


@dataclass(frozen=True)
class Edit:
    """One edit request. Which fields are set depends on ``task``.

    - attribute_change: colour, kind -> new_colour
    - object_removal: colour, kind
    - object_addition: new_colour, new_kind at slot
    - object_swap: colour, kind -> new_colour, new_kind
    - background_change: background
    - style_change: style
    """

    task: str
    colour: str | None = None
    kind: str | None = None
    new_colour: str | None = None
    new_kind: str | None = None
    slot: int | None = None
    background: str | None = None
    style: str | None = None


TEMPLATES: dict[str, tuple[str, ...]] = {
    "attribute_change": (
        "make the {colour} {kind} {new_colour}",
        "change the {colour} {kind} to {new_colour}",
        "turn the {colour} {kind} {new_colour}",
        "colour the {colour} {kind} {new_colour}",
    ),
    "object_removal": (
        "remove the {colour} {kind}",
        "delete the {colour} {kind}",
        "take away the {colour} {kind}",
        "erase the {colour} {kind}",
    ),
    "object_addition": (
        "add a {new_colour} {new_kind} at the {slot}",
        "put a {new_colour} {new_kind} in the {slot} corner",
        "draw a {new_colour} {new_kind} at the {slot}",
    ),
    "object_swap": (
        "replace the {colour} {kind} with a {new_colour} {new_kind}",
        "swap the {colour} {kind} for a {new_colour} {new_kind}",
        "turn the {colour} {kind} into a {new_colour} {new_kind}",
    ),
    "background_change": (
        "make the background {background}",
        "change the background to {background}",
        "paint the background {background}",
    ),
}


def instruction_text(edit: Edit, phrasing: int = 0) -> str:
    """The instruction for an edit, in the given phrasing (taken modulo the number of phrasings)."""
    if edit.task == "style_change":
        phrases = STYLES[edit.style].phrases
        return phrases[phrasing % len(phrases)]
    templates = TEMPLATES[edit.task]
    fields = {k: v for k, v in vars(edit).items() if v is not None}
    if edit.slot is not None:
        fields["slot"] = SLOT_NAMES[edit.slot]
    return with_articles(templates[phrasing % len(templates)].format(**fields))


def _alternation(words) -> str:
    return "(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


_FIELD_WORDS = {
    "colour": SHAPE_COLOURS,
    "new_colour": SHAPE_COLOURS,
    "kind": SHAPE_KINDS,
    "new_kind": SHAPE_KINDS,
    "slot": SLOT_NAMES,
    "background": BACKGROUND_COLOURS,
}


def _compile(template: str) -> tuple[re.Pattern, list[str]]:
    names = re.findall(r"\{(\w+)\}", template)
    pattern = re.escape(template)
    for name in names:
        pattern = pattern.replace(re.escape("{" + name + "}"), _alternation(_FIELD_WORDS[name]), 1)
    return re.compile(pattern), names


_PARSERS = [(task, *_compile(t)) for task, templates in TEMPLATES.items() for t in templates]
_STYLE_PHRASES = {phrase: name for name, style in STYLES.items() for phrase in style.phrases}


class UnknownInstruction(ValueError):
    """The instruction is not one the synthetic world knows how to carry out."""


def parse_instruction(text: str) -> Edit:
    """Read an instruction written by :func:`instruction_text` back into an :class:`Edit`."""
    normalized = " ".join(text.strip().lower().rstrip(".!").split()).replace("color", "colour")
    normalized = re.sub(r"\ban\b", "a", normalized)
    if normalized in _STYLE_PHRASES:
        return Edit(task="style_change", style=_STYLE_PHRASES[normalized])
    for task, pattern, names in _PARSERS:
        match = pattern.fullmatch(normalized)
        if match:
            values = dict(zip(names, match.groups()))
            if "slot" in values:
                values["slot"] = SLOT_NAMES.index(values["slot"])
            return Edit(task=task, **values)
    raise UnknownInstruction(f"not an instruction of the synthetic world: {text!r}")


def target_slot(edit: Edit, source: Scene) -> int | None:
    """The slot an edit is about (None for background and style changes)."""
    if edit.task == "object_addition":
        return edit.slot
    if edit.task in ("attribute_change", "object_removal", "object_swap"):
        shape = source.find(edit.colour, edit.kind)
        if shape is None:
            raise UnknownInstruction(f"there is no {edit.colour} {edit.kind} in the source image")
        return shape.slot
    return None


def apply_edit(source: Scene, edit: Edit, rng: np.random.Generator | None = None) -> tuple[Scene, str | None]:
    """The ideal result of an edit: (scene, style or None).

    ``rng`` places an added shape inside its slot; without it the shape is centred at mean size.
    """
    slot = target_slot(edit, source)
    if edit.task == "attribute_change":
        return source.with_shape(replace(source.shape_in(slot), colour=edit.new_colour)), None
    if edit.task == "object_removal":
        return source.without_slot(slot), None
    if edit.task == "object_swap":
        old = source.shape_in(slot)
        return source.with_shape(replace(old, colour=edit.new_colour, kind=edit.new_kind)), None
    if edit.task == "object_addition":
        if rng is None:
            shape = Shape(kind=edit.new_kind, colour=edit.new_colour, slot=slot)
        else:
            shape = random_shape(rng, edit.new_kind, edit.new_colour, slot)
        return source.with_shape(shape), None
    if edit.task == "background_change":
        return replace(source, background=edit.background), None
    if edit.task == "style_change":
        return source, edit.style
    raise ValueError(f"unknown task {edit.task!r}; expected one of {TASKS}")


def styled_caption(scene: Scene, style: str | None) -> str:
    text = caption(scene)
    return text if style is None else f"{text}, {STYLES[style].caption_suffix}"


def edit_mask(source: Scene, edit: Edit, target: Scene, width: int, height: int) -> np.ndarray | None:
    """The region an edit may change (True = edit), or None for global (style) edits."""
    if edit.task == "style_change":
        return None
    if edit.task == "background_change":
        return ~shape_mask(source.shapes, width, height)
    slot = target_slot(edit, source)
    shapes = [s for s in (source.shape_in(slot), target.shape_in(slot)) if s is not None]
    return dilate_mask(shape_mask(shapes, width, height), 1)


def random_edit(rng: np.random.Generator, source: Scene, tasks=TASKS) -> Edit | None:
    """A feasible edit for the scene, its task drawn uniformly among the feasible ``tasks``.

    None when no task of ``tasks`` is feasible (say, an addition into a full scene).
    """
    feasible = {"background_change", "style_change"}
    if source.shapes:
        feasible |= {"attribute_change", "object_removal", "object_swap"}
    if source.empty_slots():
        feasible.add("object_addition")
    feasible = [t for t in TASKS if t in feasible and t in tasks]
    if not feasible:
        return None
    task = str(rng.choice(feasible))
    used = {(s.colour, s.kind) for s in source.shapes}
    colours, kinds = list(SHAPE_COLOURS), list(SHAPE_KINDS)

    if task == "background_change":
        options = [b for b in BACKGROUND_COLOURS if b != source.background]
        return Edit(task=task, background=str(rng.choice(options)))
    if task == "style_change":
        return Edit(task=task, style=str(rng.choice(list(STYLES))))
    if task == "object_addition":
        slot = int(rng.choice(source.empty_slots()))
        options = [(c, k) for c in colours for k in kinds if (c, k) not in used]
        c, k = options[int(rng.integers(len(options)))]
        return Edit(task=task, new_colour=c, new_kind=k, slot=slot)
    shape = source.shapes[int(rng.integers(len(source.shapes)))]
    if task == "object_removal":
        return Edit(task=task, colour=shape.colour, kind=shape.kind)
    if task == "attribute_change":
        options = [c for c in colours if c != shape.colour and (c, shape.kind) not in used]
        return Edit(task=task, colour=shape.colour, kind=shape.kind, new_colour=str(rng.choice(options)))
    options = [(c, k) for c in colours for k in kinds if k != shape.kind and (c, k) not in used]
    c, k = options[int(rng.integers(len(options)))]
    return Edit(task=task, colour=shape.colour, kind=shape.kind, new_colour=c, new_kind=k)
