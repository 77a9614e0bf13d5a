"""The built-in prompt writer: the synthetic world's stand-in for the LLM, served as a loopback
responder so the offline default goes through the same client, cache and Batch API path as any
real endpoint.

It reads the request (:func:`.request_format.read_request`), finds the world's vocabulary in the
subtopic (a shape kind, a shape colour, a count word, a slot name, a background colour, a style
name: the :func:`~.taxonomy.synthetic_taxonomy` subtopics name exactly these) and writes scene
captions that honour it, with counts, colours, positions, background and style::

    two shapes: a red circle at the top left and a blue square at the bottom right on a white background, at night

and one contrasting variant per axis:

- content: one shape of another kind, one shape of another colour, or one shape more or less;
- counterfactual: the same shapes bound differently: two shapes' colours swapped (or, when no
  swap is possible, their places; a lone shape moves to the opposite corner);
- aesthetics: another style (a style where the base has none).

Everything is drawn from a generator seeded with the request's ``seed`` and the subtopic, so the
same request always gets the same answer. A subtopic that names none of the world's vocabulary
is refused (HTTP 422): the writer never makes up a prompt about something it does not know.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np

from ..annotation.responders import ChatRequest, ResponderError
from ..synthetic.edits import STYLES, styled_caption
from ..synthetic.world import BACKGROUND_COLOURS, SHAPE_COLOURS, SHAPE_KINDS, SLOT_NAMES, Scene, Shape, random_scene
from .request_format import BASE, SCHEMA_NAME, read_request

SYNTHETIC_WRITER_MODEL = "editforge-synthetic-writer"
NUMBER_WORDS = ("one", "two", "three", "four")  # a scene holds at most one shape per slot
STYLED_SHARE = 0.25  # of base prompts given a style when the subtopic names none
MAX_DRAWS = 200  # scenes drawn per prompt before a subtopic's wishes are given up as impossible


@dataclass(frozen=True)
class Wishes:
    """What a subtopic asks of a scene (None: anything)."""

    kind: str | None = None
    colour: str | None = None
    count: int | None = None
    slot: int | None = None
    background: str | None = None
    style: str | None = None

    def met_by(self, scene: Scene) -> bool:
        """A shape of the kind and colour wished for (in the slot wished for) is in the scene."""
        shapes = [s for s in scene.shapes if self.slot in (None, s.slot)]
        return any(self.kind in (None, s.kind) and self.colour in (None, s.colour) for s in shapes)


def read_subtopic(subtopic: str) -> Wishes | None:
    """The world's vocabulary named in a subtopic, or None when it names none of it."""
    text = subtopic.lower()
    words = re.findall(r"[a-z]+", text)

    def first(names) -> str | None:
        return next((n for n in names if n in words or f"{n}s" in words), None)

    count = next((i + 1 for i, n in enumerate(NUMBER_WORDS) if n in words), None)
    slot = next((i for i, name in enumerate(SLOT_NAMES) if re.search(rf"\b{name}\b", text)), None)
    wishes = Wishes(first(SHAPE_KINDS), first(SHAPE_COLOURS), count, slot, first(BACKGROUND_COLOURS), first(STYLES))
    return None if wishes == Wishes() else wishes


def world_prompt(scene: Scene, style: str | None) -> str:
    """'<count> shape(s): <the world's caption, with its style>' ('no shapes: ...' for an empty scene)."""
    n = len(scene.shapes)
    count = "no" if n == 0 else NUMBER_WORDS[n - 1]
    return f"{count} shape{'' if n == 1 else 's'}: {styled_caption(scene, style)}"


def _with_shapes(scene: Scene, shapes) -> Scene:
    return replace(scene, shapes=tuple(sorted(shapes, key=lambda s: s.slot)))


def _draw_base(rng: np.random.Generator, wishes: Wishes) -> tuple[Scene, str | None]:
    for _ in range(MAX_DRAWS):
        scene = random_scene(rng, wishes.count)
        if wishes.background is not None:
            scene = replace(scene, background=wishes.background)
        if wishes.met_by(scene):
            break
    else:
        raise ResponderError(422, f"the synthetic-world writer found no scene with {wishes} in {MAX_DRAWS} draws")
    style = wishes.style
    if style is None and rng.random() < STYLED_SHARE:
        style = str(rng.choice(list(STYLES)))
    return scene, style


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _content(rng: np.random.Generator, scene: Scene) -> Scene:
    """One shape of another kind or colour, or one shape more or less."""
    shapes = list(scene.shapes)
    used = {(s.colour, s.kind) for s in shapes}
    changes = {
        "object": [(s, replace(s, kind=k)) for s in shapes for k in SHAPE_KINDS if (s.colour, k) not in used],
        "attribute": [(s, replace(s, colour=c)) for s in shapes for c in SHAPE_COLOURS if (c, s.kind) not in used],
        "fewer": [(s, None) for s in shapes] if len(shapes) > 1 else [],
        "more": [(None, Shape(k, c, slot)) for slot in scene.empty_slots()
                 for k in SHAPE_KINDS for c in SHAPE_COLOURS if (c, k) not in used],
    }
    old, new = _pick(rng, _pick(rng, [options for options in changes.values() if options]))
    return _with_shapes(scene, [s for s in shapes if s is not old] + ([new] if new is not None else []))


def _counterfactual(rng: np.random.Generator, scene: Scene) -> Scene:
    """The same shapes bound differently: colours swapped between two, else places swapped."""
    shapes = list(scene.shapes)
    if len(shapes) == 1:
        return _with_shapes(scene, [replace(shapes[0], slot=len(SLOT_NAMES) - 1 - shapes[0].slot)])
    used = {(s.colour, s.kind) for s in shapes}
    pairs = list(combinations(shapes, 2))
    swaps = [(a, b) for a, b in pairs if a.colour != b.colour
             and not {(b.colour, a.kind), (a.colour, b.kind)} & (used - {(a.colour, a.kind), (b.colour, b.kind)})]
    if swaps:
        a, b = _pick(rng, swaps)
        a_new, b_new = replace(a, colour=b.colour), replace(b, colour=a.colour)
    else:
        a, b = _pick(rng, pairs)
        a_new, b_new = replace(a, slot=b.slot), replace(b, slot=a.slot)
    return _with_shapes(scene, [s for s in shapes if s is not a and s is not b] + [a_new, b_new])


def _aesthetics(rng: np.random.Generator, style: str | None) -> str:
    return str(rng.choice([name for name in STYLES if name != style]))


def contrasting_prompt(rng: np.random.Generator, axis: str, scene: Scene, style: str | None) -> str:
    if axis == "content":
        return world_prompt(_content(rng, scene), style)
    if axis == "counterfactual":
        return world_prompt(_counterfactual(rng, scene), style)
    if axis == "aesthetics":
        return world_prompt(scene, _aesthetics(rng, style))
    raise ValueError(f"the synthetic-world writer has no variant for the contrast axis {axis!r}")


def _generator(seed, theme: str, subtopic: str) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"the request's seed must be a whole number 0 or more, got {seed!r}")
    digest = hashlib.sha256(f"{theme}\n{subtopic}".encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


class SyntheticPromptWriter:
    """A loopback responder (see :mod:`editforge.dataset_builders.annotation.responders`)
    answering prompt requests for the synthetic world (see the module docstring)."""

    cpu_bound = False

    def subject(self, request: ChatRequest) -> str:
        """A fault's ``match`` is looked for in the subtopic."""
        return read_request(request.body).subtopic

    def respond(self, request: ChatRequest) -> dict:
        if request.schema_name != SCHEMA_NAME:
            raise ValueError(f"the synthetic-world writer answers {SCHEMA_NAME} requests only")
        asked = read_request(request.body)
        wishes = read_subtopic(asked.subtopic)
        if wishes is None:
            raise ResponderError(422, f"the synthetic-world writer knows no shape, colour, count, position, "
                                      f"background or style in the subtopic {asked.subtopic!r}")
        rng = _generator(request.body.get("seed", 0), asked.theme, asked.subtopic)
        prompts, seen = [], set()
        for _ in range(MAX_DRAWS * asked.count):
            if len(prompts) == asked.count:
                break
            scene, style = _draw_base(rng, wishes)
            base = world_prompt(scene, style)
            if base in seen:
                continue
            seen.add(base)
            prompts.append({BASE: base, **{axis: contrasting_prompt(rng, axis, scene, style) for axis in asked.axes}})
        if len(prompts) < asked.count:
            raise ResponderError(422, f"the synthetic-world writer found only {len(prompts)} distinct scenes for "
                                      f"the subtopic {asked.subtopic!r}, {asked.count} were asked")
        return {"prompts": prompts}
