"""Controlled imperfections of the three kinds Multi-Reward names.

- instruction-following failures change what the edit did (wrong colour, wrong shape, wrong
  object, wrong place, wrong style, no change);
- detail-preserving failures change something the instruction did not ask about (another shape
  moved or recoloured, the background changed);
- generation-quality failures degrade the pixels (noise, blur, blocky artefacts), mild or strong
  as the rubric defines them.

Each ``apply_*`` function returns the imperfect result, or None when that failure is impossible
for the scene (no free colour left, say). The rubric then scores whatever was produced, so the
ground truth never depends on the failure's name.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image, ImageFilter

from .edits import STYLES, Edit, target_slot
from .rubric import BLOCKY_DELTA, NOISE_SIGMA, block_size, blur_sigma
from .world import BACKGROUND_COLOURS, MOVED_OFFSET, SHAPE_COLOURS, SHAPE_KINDS, Scene


def _free_pairs(scene: Scene, exclude=()) -> list[tuple[str, str]]:
    used = {(s.colour, s.kind) for s in scene.shapes} | set(exclude)
    return [(c, k) for c in SHAPE_COLOURS for k in SHAPE_KINDS if (c, k) not in used]


def _pick(rng: np.random.Generator, options):
    return str(rng.choice(options)) if options else None


INSTRUCTION_FAILURE_KINDS = ("no_change", "wrong_colour", "wrong_shape", "wrong_object", "wrong_position", "wrong_style")


def instruction_failures(source: Scene, edit: Edit) -> list[str]:
    """The instruction-following failures possible for this edit on this scene."""
    others = len(source.shapes) - (0 if edit.task == "object_addition" else 1)
    options = ["no_change"]
    if edit.task in ("attribute_change", "object_swap", "object_addition", "background_change"):
        options.append("wrong_colour")
    if edit.task in ("object_swap", "object_addition"):
        options.append("wrong_shape")
    if edit.task in ("attribute_change", "object_removal", "object_swap") and others >= 1:
        options.append("wrong_object")
    if edit.task == "object_addition" and len(source.empty_slots()) >= 2:
        options.append("wrong_position")
    if edit.task == "style_change":
        options.append("wrong_style")
    return options


def apply_instruction_failure(
    rng: np.random.Generator, source: Scene, edit: Edit, target: Scene, style: str | None, failure: str
) -> tuple[Scene, str | None] | None:
    """The (scene, style) that an edit with the given failure produces instead of ``target``."""
    if failure == "no_change":
        return source, None
    slot = target_slot(edit, source)
    if failure == "wrong_style":
        return target, str(rng.choice([s for s in STYLES if s != edit.style]))
    if failure == "wrong_colour" and edit.task == "background_change":
        options = [b for b in BACKGROUND_COLOURS if b not in (edit.background, source.background)]
        return replace(target, background=str(rng.choice(options))), style
    if failure in ("wrong_colour", "wrong_shape"):
        shape = target.shape_in(slot)
        exclude = {(edit.new_colour, edit.new_kind)}
        if failure == "wrong_colour":
            options = [c for c, k in _free_pairs(source, exclude) if k == shape.kind and c != edit.new_colour]
            if edit.task == "attribute_change":
                options = [c for c in options if c != edit.colour]
            colour = _pick(rng, options)
            return None if colour is None else (target.with_shape(replace(shape, colour=colour)), style)
        options = [k for c, k in _free_pairs(source, exclude) if c == shape.colour and k != edit.new_kind]
        if edit.task == "object_swap":
            options = [k for k in options if k != edit.kind]
        kind = _pick(rng, options)
        return None if kind is None else (target.with_shape(replace(shape, kind=kind)), style)
    if failure == "wrong_position":
        other = int(rng.choice([s for s in source.empty_slots() if s != slot]))
        return source.with_shape(replace(target.shape_in(slot), slot=other)), style
    if failure == "wrong_object":
        victim = [s for s in source.shapes if s.slot != slot][int(rng.integers(len(source.shapes) - 1))]
        if edit.task == "object_removal":
            return source.without_slot(victim.slot), style
        if edit.task == "attribute_change":
            return source.with_shape(replace(victim, colour=edit.new_colour)), style
        return source.with_shape(replace(victim, colour=edit.new_colour, kind=edit.new_kind)), style
    raise ValueError(f"{failure!r} is not an instruction-following failure for {edit.task}")


def detail_failures(source: Scene, edit: Edit, result: Scene) -> list[str]:
    """The detail-preserving failures possible on top of ``result``."""
    slot = target_slot(edit, source)
    bystanders = [s for s in result.shapes if s.slot != slot and source.shape_in(s.slot) == s]
    options = []
    if bystanders:
        options += ["moved", "recoloured"]
    if edit.task != "background_change":
        options.append("background_changed")
    return options


def apply_detail_failure(
    rng: np.random.Generator, source: Scene, edit: Edit, result: Scene, failure: str
) -> Scene | None:
    slot = target_slot(edit, source)
    if failure == "background_changed":
        options = [b for b in BACKGROUND_COLOURS if b not in (source.background, result.background, edit.background)]
        return replace(result, background=str(rng.choice(options)))
    bystanders = [s for s in result.shapes if s.slot != slot and source.shape_in(s.slot) == s]
    shape = bystanders[int(rng.integers(len(bystanders)))]
    if failure == "moved":
        dx = -MOVED_OFFSET if shape.dx > 0 else MOVED_OFFSET
        dy = -MOVED_OFFSET if shape.dy > 0 else MOVED_OFFSET
        return result.with_shape(replace(shape, dx=dx, dy=dy))
    if failure == "recoloured":
        taken = {edit.colour, edit.new_colour, shape.colour}
        options = [c for c, k in _free_pairs(result) if k == shape.kind and c not in taken]
        colour = _pick(rng, options)
        return None if colour is None else result.with_shape(replace(shape, colour=colour))
    raise ValueError(f"{failure!r} is not a detail-preserving failure")


def apply_artefact(rng: np.random.Generator, image: np.ndarray, artefact: str, level: str) -> np.ndarray:
    height, width = image.shape[:2]
    if artefact == "noise":
        noisy = image.astype(np.float32) + rng.normal(0.0, NOISE_SIGMA[level], image.shape)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    if artefact == "blur":
        radius = blur_sigma(level, min(width, height))
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)), dtype=np.uint8).copy()
    if artefact == "blocky":
        b = block_size(min(width, height))
        rows, cols = -(-height // b), -(-width // b)
        offsets = rng.uniform(-BLOCKY_DELTA[level], BLOCKY_DELTA[level], (rows, cols))
        field = np.kron(offsets, np.ones((b, b), np.float32))[:height, :width, None]
        return np.clip(np.round(image.astype(np.float32) + field), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown artefact {artefact!r}")
