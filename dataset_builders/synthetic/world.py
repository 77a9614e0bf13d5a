"""The synthetic editing world: scenes of coloured shapes on a coloured background.

A scene has up to four shapes, one per slot of a 2x2 grid (``top left``, ``top right``,
``bottom left``, ``bottom right``), each with a kind (circle, square, triangle), a colour from
``SHAPE_COLOURS``, a size and an offset inside its slot. The grid stretches with the image, so
any size and aspect ratio works. Within a scene each (colour, kind) pair is unique, so an
instruction such as "make the red circle blue" names exactly one shape.

Rendering is deterministic and has hard edges (no anti-aliasing): the same scene at the same
size always gives the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPE_KINDS = ("circle", "square", "triangle")

# Saturated colours for shapes; muted ones for backgrounds. The two palettes are far apart in
# RGB (>= 100) so a shape can always be told from the background, even under noise and blur.
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 145, 30),
    "yellow": (245, 225, 50),
    "green": (40, 165, 70),
    "cyan": (40, 200, 215),
    "blue": (45, 80, 225),
    "purple": (135, 60, 190),
    "pink": (245, 130, 195),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (150, 150, 150),
    "black": (25, 25, 25),
    "beige": (225, 205, 165),
    "navy": (25, 35, 90),
}

SLOT_NAMES = ("top left", "top right", "bottom left", "bottom right")

# Shape size as a fraction of the slot's shorter side, and offsets as a fraction of the free
# space on each side of the centred shape. Sources keep offsets small; a "moved" shape (a
# detail-preserving failure) jumps to the far side of its slot.
SIZE_RANGE = (0.45, 0.65)
SOURCE_OFFSET = 0.45
MOVED_OFFSET = 0.85


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    slot: int
    size: float = 0.55
    dx: float = 0.0
    dy: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...] = field(default_factory=tuple)

    def shape_in(self, slot: int) -> Shape | None:
        for shape in self.shapes:
            if shape.slot == slot:
                return shape
        return None

    def find(self, colour: str, kind: str) -> Shape | None:
        for shape in self.shapes:
            if shape.colour == colour and shape.kind == kind:
                return shape
        return None

    def empty_slots(self) -> list[int]:
        used = {s.slot for s in self.shapes}
        return [i for i in range(len(SLOT_NAMES)) if i not in used]

    def with_shape(self, shape: Shape) -> "Scene":
        """The scene with ``shape`` put in its slot (replacing what was there)."""
        others = tuple(s for s in self.shapes if s.slot != shape.slot)
        return replace(self, shapes=tuple(sorted(others + (shape,), key=lambda s: s.slot)))

    def without_slot(self, slot: int) -> "Scene":
        return replace(self, shapes=tuple(s for s in self.shapes if s.slot != slot))


def slot_box(slot: int, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a slot in pixels."""
    col, row = slot % 2, slot // 2
    return (col * width / 2, row * height / 2, (col + 1) * width / 2, (row + 1) * height / 2)


def shape_geometry(shape: Shape, width: int, height: int) -> tuple[float, float, int]:
    """Centre (x, y) and side length in pixels of a shape's bounding square."""
    left, top, right, bottom = slot_box(shape.slot, width, height)
    sw, sh = right - left, bottom - top
    side = max(3, int(round(shape.size * min(sw, sh))))
    cx = (left + right) / 2 + shape.dx * (sw - side) / 2
    cy = (top + bottom) / 2 + shape.dy * (sh - side) / 2
    return cx, cy, side


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, width: int, height: int, fill) -> None:
    cx, cy, side = shape_geometry(shape, width, height)
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - side / 2))
    x1, y1 = x0 + side - 1, y0 + side - 1
    if shape.kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape.kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape.kind == "triangle":
        draw.polygon(((x0 + x1) / 2, y0, x1, y1, x0, y1), fill=fill)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}; expected one of {SHAPE_KINDS}")


def render(scene: Scene, width: int, height: int) -> np.ndarray:
    """The scene as an HxWx3 uint8 array."""
    image = Image.new("RGB", (width, height), BACKGROUND_COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        _draw_shape(draw, shape, width, height, SHAPE_COLOURS[shape.colour])
    return np.asarray(image, dtype=np.uint8).copy()


def shape_mask(shapes, width: int, height: int, dilate: int = 0) -> np.ndarray:
    """Boolean HxW mask covering the given shapes, optionally grown by ``dilate`` pixels."""
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        _draw_shape(draw, shape, width, height, 255)
    mask = np.asarray(image) > 0
    return dilate_mask(mask, dilate) if dilate else mask


def dilate_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def join_words(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def with_articles(text: str) -> str:
    """'a orange circle' -> 'an orange circle'."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def caption(scene: Scene) -> str:
    """A plain-English caption: 'a red circle at the top left and ... on a white background'."""
    if not scene.shapes:
        return f"an empty {scene.background} background"
    parts = [f"a {s.colour} {s.kind} at the {SLOT_NAMES[s.slot]}" for s in scene.shapes]
    return with_articles(f"{join_words(parts)} on a {scene.background} background")


def random_shape(rng: np.random.Generator, kind: str, colour: str, slot: int) -> Shape:
    return Shape(
        kind=kind,
        colour=colour,
        slot=slot,
        size=float(np.round(rng.uniform(*SIZE_RANGE), 3)),
        dx=float(np.round(rng.uniform(-SOURCE_OFFSET, SOURCE_OFFSET), 3)),
        dy=float(np.round(rng.uniform(-SOURCE_OFFSET, SOURCE_OFFSET), 3)),
    )


def random_scene(rng: np.random.Generator, n_shapes: int | None = None) -> Scene:
    """A scene of 1-4 shapes with unique (colour, kind) pairs."""
    if n_shapes is None:
        n_shapes = int(rng.integers(1, 5))
    slots = sorted(rng.choice(len(SLOT_NAMES), size=n_shapes, replace=False).tolist())
    background = str(rng.choice(list(BACKGROUND_COLOURS)))
    used: set[tuple[str, str]] = set()
    shapes = []
    for slot in slots:
        while True:
            colour = str(rng.choice(list(SHAPE_COLOURS)))
            kind = str(rng.choice(SHAPE_KINDS))
            if (colour, kind) not in used:
                break
        used.add((colour, kind))
        shapes.append(random_shape(rng, kind, colour, slot))
    return Scene(background=background, shapes=tuple(shapes))
