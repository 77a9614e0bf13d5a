"""The scoring rubric of the synthetic world, shared by the ground truth and the oracle judge.

Multi-Reward scores every triplet from three perspectives, each 0..5 with a short text naming
the failure points ("None" when there is none). Here the rubric is a function of scenes:
the generator applies it to the scenes it drew, the oracle to the scenes it reads from pixels.
The two agree exactly whenever the oracle reads the pixels right.

Instruction following (what was asked happened):
    5 done; 3 added at the wrong place; 2 wrong colour or wrong shape; 1 wrong object, wrong
    style, a different edit, or a global edit (background, style) of an image that no longer shows
    the scene; 0 no change.
Detail preserving (nothing else changed), 5 minus penalties, at least 0:
    another shape disappeared -3; appeared -2; recoloured or reshaped -2; moved -2;
    background changed when not asked -3; the whole image restyled when not asked -4.
Generation quality (the image is clean): 5 clean; 3 mild; 1 strong noise, blur or blockiness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from editforge.vocabulary import NO_FAILURE, PERSPECTIVES

from .edits import STYLES, Edit, target_slot
from .world import SLOT_NAMES, Scene, Shape, shape_geometry, slot_box, with_articles

# A shape whose centre moved by more than this fraction of its slot's shorter side has moved.
# Generated moves are at least ~0.15 per axis; measurement jitter stays far below 0.08.
MOVE_THRESHOLD = 0.08

PENALTY_DISAPPEARED = 3
PENALTY_APPEARED = 2
PENALTY_CHANGED = 2
PENALTY_MOVED = 2
PENALTY_BACKGROUND = 3
PENALTY_RESTYLED = 4

ARTEFACT_KINDS = ("noise", "blur", "blocky")
ARTEFACT_LEVELS = ("mild", "strong")

# What "mild" and "strong" mean, in pixels of an image whose shorter side is S. The generator
# makes artefacts of exactly these strengths; the oracle classifies against them.
NOISE_SIGMA = {"mild": 10.0, "strong": 28.0}       # Gaussian noise, 0..255 scale
BLOCKY_DELTA = {"mild": 8.0, "strong": 20.0}       # block offsets uniform in [-delta, delta]


def blur_sigma(level: str, short_side: int) -> float:
    """Gaussian blur radius of a level, growing with the image (with a floor for tiny images)."""
    return {"mild": max(0.6, short_side / 110), "strong": max(1.2, short_side / 60)}[level]


def block_size(short_side: int) -> int:
    """Side of the artefact blocks: a multiple of 4, aligned at the image origin."""
    return 4 * max(1, round(short_side / 64))


QUALITY_SCORES = {None: 5, "mild": 3, "strong": 1}
QUALITY_FEEDBACK = {
    ("noise", "mild"): "slight grain and noise across the image",
    ("noise", "strong"): "heavy noise all over the image",
    ("blur", "mild"): "the image is slightly blurry, edges are soft",
    ("blur", "strong"): "the image is very blurry",
    ("blocky", "mild"): "faint blocky compression artefacts",
    ("blocky", "strong"): "strong blocky compression artefacts",
}


@dataclass(frozen=True)
class Judgement:
    score: int
    feedback: str

    def as_dict(self) -> dict:
        return {"score": self.score, "feedback": with_articles(self.feedback)}


def _slot(slot: int) -> str:
    return SLOT_NAMES[slot]


def moved(a: Shape, b: Shape, width: int, height: int) -> bool:
    ax, ay, _ = shape_geometry(a, width, height)
    bx, by, _ = shape_geometry(b, width, height)
    left, top, right, bottom = slot_box(a.slot, width, height)
    return math.hypot(ax - bx, ay - by) > MOVE_THRESHOLD * min(right - left, bottom - top)


def _shape_changed_elsewhere(source: Scene, result: Scene, exclude: int, predicate) -> Shape | None:
    """The first source shape outside ``exclude`` whose slot now satisfies ``predicate``."""
    for slot in range(len(SLOT_NAMES)):
        if slot == exclude:
            continue
        before, after = source.shape_in(slot), result.shape_in(slot)
        if predicate(before, after):
            return before if before is not None else after
    return None


def scene_kept(source: Scene, result: Scene) -> bool:
    """Whether the result still shows the source's scene: at least half of the slots that held a
    shape still hold one (of any colour or kind, anywhere in the slot). A global edit (background,
    style) of an image it destroyed has not been carried out."""
    occupied = [s.slot for s in source.shapes]
    kept = sum(result.shape_in(slot) is not None for slot in occupied)
    return 2 * kept >= len(occupied)


LOST_SCENE = "the edited image no longer shows the scene"


def instruction_following(source: Scene, edit: Edit, result: Scene, result_style: str | None) -> Judgement:
    """Did the result do what the instruction asked?"""
    if edit.task in ("style_change", "background_change") and not scene_kept(source, result):
        return Judgement(1, LOST_SCENE)
    if edit.task == "style_change":
        wanted = STYLES[edit.style].caption_suffix
        if result_style == edit.style:
            return Judgement(5, NO_FAILURE)
        if result_style is None:
            return Judgement(0, f"the image is unchanged, it does not look {wanted}")
        return Judgement(1, f"the image looks {STYLES[result_style].caption_suffix}, not {wanted}")

    if edit.task == "background_change":
        if result.background == edit.background:
            return Judgement(5, NO_FAILURE)
        if result.background == source.background:
            return Judgement(0, f"the background is still {source.background}")
        return Judgement(2, f"the background is {result.background}, not {edit.background}")

    slot = target_slot(edit, source)
    after = result.shape_in(slot)

    if edit.task == "object_addition":
        wanted = f"{edit.new_colour} {edit.new_kind}"
        if after is not None and (after.colour, after.kind) == (edit.new_colour, edit.new_kind):
            return Judgement(5, NO_FAILURE)
        if after is not None and after.kind == edit.new_kind:
            return Judgement(2, f"the added {after.kind} is {after.colour}, not {edit.new_colour}")
        if after is not None and after.colour == edit.new_colour:
            return Judgement(2, f"a {after.name} was added, not a {wanted}")
        if after is not None:
            return Judgement(1, f"a {after.name} was added instead of a {wanted}")
        elsewhere = _shape_changed_elsewhere(
            source, result, slot,
            lambda b, a: b is None and a is not None and (a.colour, a.kind) == (edit.new_colour, edit.new_kind),
        )
        if elsewhere is not None:
            return Judgement(3, f"the {wanted} was added at the {_slot(elsewhere.slot)}, not the {_slot(slot)}")
        return Judgement(0, f"no {wanted} was added")

    before = source.shape_in(slot)
    named = before.name

    if edit.task == "object_removal":
        if after is None:
            return Judgement(5, NO_FAILURE)
        if (after.colour, after.kind) == (before.colour, before.kind):
            other = _shape_changed_elsewhere(source, result, slot, lambda b, a: b is not None and a is None)
            if other is not None:
                return Judgement(1, f"the {other.name} was removed instead of the {named}")
            return Judgement(0, f"the {named} is still there")
        return Judgement(1, f"the {named} was turned into a {after.name} instead of being removed")

    if edit.task == "attribute_change":
        if after is not None and after.kind == before.kind and after.colour == edit.new_colour:
            return Judgement(5, NO_FAILURE)
        if after is not None and (after.colour, after.kind) == (before.colour, before.kind):
            other = _shape_changed_elsewhere(
                source, result, slot,
                lambda b, a: b is not None and a is not None and b.colour != edit.new_colour
                and a.colour == edit.new_colour,
            )
            if other is not None:
                return Judgement(1, f"the {other.name} was made {edit.new_colour} instead of the {named}")
            return Judgement(0, f"the {named} is still {before.colour}")
        if after is not None and after.kind == before.kind:
            return Judgement(2, f"the {before.kind} is {after.colour}, not {edit.new_colour}")
        if after is None:
            return Judgement(1, f"the {named} was removed instead of made {edit.new_colour}")
        return Judgement(1, f"the {named} became a {after.name} instead of a {edit.new_colour} {before.kind}")

    if edit.task == "object_swap":
        wanted = f"{edit.new_colour} {edit.new_kind}"
        if after is not None and (after.colour, after.kind) == (edit.new_colour, edit.new_kind):
            return Judgement(5, NO_FAILURE)
        if after is not None and (after.colour, after.kind) == (before.colour, before.kind):
            other = _shape_changed_elsewhere(
                source, result, slot,
                lambda b, a: b is not None and a is not None and (b.colour, b.kind) != (a.colour, a.kind)
                and (a.colour, a.kind) == (edit.new_colour, edit.new_kind),
            )
            if other is not None:
                return Judgement(1, f"the {other.name} was replaced instead of the {named}")
            return Judgement(0, f"the {named} was not replaced")
        if after is not None and after.kind == edit.new_kind:
            return Judgement(2, f"the new {after.kind} is {after.colour}, not {edit.new_colour}")
        if after is not None and after.colour == edit.new_colour:
            return Judgement(2, f"the {named} became a {after.name}, not a {wanted}")
        if after is None:
            return Judgement(1, f"the {named} was removed instead of replaced with a {wanted}")
        return Judgement(1, f"the {named} became a {after.name}, not a {wanted}")

    raise ValueError(f"unknown task {edit.task!r}")


def detail_preserving(
    source: Scene, edit: Edit, result: Scene, result_style: str | None, width: int, height: int
) -> Judgement:
    """Did everything the instruction did not ask about stay as it was?"""
    protected = set(range(len(SLOT_NAMES)))
    slot = target_slot(edit, source)
    if slot is not None:
        protected.discard(slot)
    penalty, problems = 0, []
    for s in sorted(protected):
        before, after = source.shape_in(s), result.shape_in(s)
        if before is not None and after is None:
            penalty += PENALTY_DISAPPEARED
            problems.append(f"the {before.name} disappeared")
        elif before is None and after is not None:
            penalty += PENALTY_APPEARED
            problems.append(f"a {after.name} appeared at the {_slot(s)}")
        elif before is not None and after is not None:
            if before.kind != after.kind:
                penalty += PENALTY_CHANGED
                problems.append(f"the {before.name} became a {after.name}")
            elif before.colour != after.colour:
                penalty += PENALTY_CHANGED
                problems.append(f"the {before.kind} at the {_slot(s)} is {after.colour}, not {before.colour}")
            if moved(before, after, width, height):
                penalty += PENALTY_MOVED
                problems.append(f"the {before.kind} at the {_slot(s)} moved")
    if edit.task != "background_change" and result.background != source.background:
        penalty += PENALTY_BACKGROUND
        problems.append(f"the background is {result.background}, not {source.background}")
    if edit.task != "style_change" and result_style is not None:
        penalty += PENALTY_RESTYLED
        problems.append(f"the whole image was restyled {STYLES[result_style].caption_suffix}")
    if not problems:
        return Judgement(5, NO_FAILURE)
    return Judgement(max(0, 5 - penalty), ", ".join(problems))


def generation_quality(artefact: str | None, level: str | None) -> Judgement:
    if artefact is None or level is None:
        return Judgement(QUALITY_SCORES[None], NO_FAILURE)
    return Judgement(QUALITY_SCORES[level], QUALITY_FEEDBACK[(artefact, level)])


def judge(
    source: Scene,
    edit: Edit,
    result: Scene,
    result_style: str | None,
    artefact: str | None,
    level: str | None,
    width: int,
    height: int,
) -> dict[str, dict]:
    """All three perspectives as ``{perspective: {"score", "feedback"}}``."""
    return {
        "instruction_following": instruction_following(source, edit, result, result_style).as_dict(),
        "detail_preserving": detail_preserving(source, edit, result, result_style, width, height).as_dict(),
        "generation_quality": generation_quality(artefact, level).as_dict(),
    }
