"""The oracle judge of the synthetic world: three Multi-Reward scores from pixels alone.

Given the source image, the instruction and the edited image (nothing else: no scene metadata),
it reads both images back into scenes, reads the instruction back into an edit, applies the
shared :mod:`rubric`, and measures noise, blockiness and blur on the edited pixels.

Reading an image:
1. A 3x3 median filter takes out most noise without moving edges.
2. The global style is the invertible colour map (or none) under which the pixels sit closest
   to the world's palette.
3. The background is the most common background colour; a pixel is foreground when it is far
   from it. Each slot of the 2x2 grid holds at most one shape: its largest foreground component.
4. A shape's colour is the nearest palette colour to its median; its kind is the template
   (square, circle, triangle) stretched over its bounding box that overlaps it best.

Measuring quality, on the residual between the image and a flat re-painting of what was read:
noise is the spread inside 4x4 blocks, blockiness the spread of 4x4 block means (the generator's
artefact blocks are multiples of 4, aligned at the origin), blur the residual mass along edges
per unit of edge contrast (about 0.8 sigma for a Gaussian blur).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from . import rubric
from .edits import STYLES, Edit, parse_instruction, target_slot, UnknownInstruction
from .world import BACKGROUND_COLOURS, SHAPE_COLOURS, SHAPE_KINDS, SIZE_RANGE, SLOT_NAMES, Scene, Shape, slot_box

BG_NAMES = list(BACKGROUND_COLOURS)
SHAPE_NAMES = list(SHAPE_COLOURS)
_BASE_PALETTE = np.asarray([BACKGROUND_COLOURS[n] for n in BG_NAMES] + [SHAPE_COLOURS[n] for n in SHAPE_NAMES], np.float32)

# Thresholds between none / mild / strong, calibrated on generated artefacts at 32..256 px and
# placed between the rubric's levels (tests/test_oracle.py holds the agreement they give).
NOISE_THRESHOLDS = (4.5, 15.0)      # sigma estimate, 0..255 scale
BLOCKY_THRESHOLDS = (2.5, 7.0)      # rms of 4x4 block means
# Edge residual per unit of edge contrast is about this many blur sigmas.
BLUR_RESIDUAL_PER_SIGMA = 0.62


class OracleError(ValueError):
    """The oracle cannot judge this triplet (an instruction or source it cannot read)."""


@dataclass
class ReadImage:
    scene: Scene
    style: str | None
    segmentation: np.ndarray  # HxW int: 0 background, k+1 the shape of slot k
    repaint: np.ndarray       # HxWx3 float: each region painted with its colour


def _as_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise OracleError(f"expected an HxWx3 RGB image, got shape {array.shape}")
    return array.astype(np.float32)


def median3(image: np.ndarray) -> np.ndarray:
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1))
    return np.median(windows.reshape(*image.shape, 9), axis=-1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask."""
    if not mask.any():
        return mask
    h, w = mask.shape
    big = np.iinfo(np.int64).max
    labels = np.where(mask, np.arange(h * w, dtype=np.int64).reshape(h, w), big)
    while True:
        nxt = labels.copy()
        np.minimum(nxt[1:], labels[:-1], out=nxt[1:])
        np.minimum(nxt[:-1], labels[1:], out=nxt[:-1])
        np.minimum(nxt[:, 1:], labels[:, :-1], out=nxt[:, 1:])
        np.minimum(nxt[:, :-1], labels[:, 1:], out=nxt[:, :-1])
        nxt = np.where(mask, nxt, big)
        if np.array_equal(nxt, labels):
            break
        labels = nxt
    values, counts = np.unique(labels[mask], return_counts=True)
    return labels == values[np.argmax(counts)]


def _palette(style: str | None) -> np.ndarray:
    return _BASE_PALETTE if style is None else STYLES[style].map_colour(_BASE_PALETTE)


def _nearest(pixels: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and distance to the nearest palette colour, per pixel."""
    flat = pixels.reshape(-1, 3)
    squared = (flat * flat).sum(1, keepdims=True) - 2.0 * flat @ palette.T + (palette * palette).sum(1)
    index = squared.argmin(1)
    distance = np.sqrt(np.maximum(squared[np.arange(len(flat)), index], 0.0))
    return index.reshape(pixels.shape[:-1]), distance.reshape(pixels.shape[:-1])


def detect_style(filtered: np.ndarray) -> str | None:
    """The style (or None) under which the image's colours fit the world's palette best."""
    best, best_fit = None, np.inf
    sample = filtered[::2, ::2]
    for style in [None, *STYLES]:
        fit = float(_nearest(sample, _palette(style))[1].mean())
        if fit < best_fit:
            best, best_fit = style, fit
    return best


def _template(kind: str, width: int, height: int) -> np.ndarray:
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    box = (0, 0, width - 1, height - 1)
    if kind == "circle":
        draw.ellipse(box, fill=255)
    elif kind == "square":
        draw.rectangle(box, fill=255)
    else:
        draw.polygon(((width - 1) / 2, 0, width - 1, height - 1, 0, height - 1), fill=255)
    return np.asarray(image) > 0


def classify_kind(region: np.ndarray) -> str:
    """The shape kind whose template, stretched over the region's bounding box, overlaps it best."""
    ys, xs = np.nonzero(region)
    crop = region[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    h, w = crop.shape
    best, best_iou = SHAPE_KINDS[0], -1.0
    for kind in SHAPE_KINDS:
        template = _template(kind, w, h)
        iou = (crop & template).sum() / float((crop | template).sum())
        if iou > best_iou:
            best, best_iou = kind, iou
    return best


def read_image(image, detect: bool = True) -> ReadImage:
    """Read an image of the synthetic world back into a scene (and its style)."""
    pixels = _as_array(image)
    height, width = pixels.shape[:2]
    filtered = median3(pixels)
    style = detect_style(filtered) if detect else None
    palette = _palette(style)
    n_bg = len(BG_NAMES)

    labels, _ = _nearest(filtered, palette)
    bg_counts = np.bincount(labels.ravel(), minlength=len(palette))[:n_bg]
    bg_index = int(bg_counts.argmax())
    bg_pixels = filtered[labels == bg_index]
    bg_rgb = np.median(bg_pixels, axis=0) if len(bg_pixels) else palette[bg_index]
    bg_name = BG_NAMES[int(np.linalg.norm(palette[:n_bg] - bg_rgb, axis=-1).argmin())]

    threshold = 0.45 * float(np.linalg.norm(palette[n_bg:] - bg_rgb, axis=-1).min())
    foreground = np.linalg.norm(filtered - bg_rgb, axis=-1) > threshold

    segmentation = np.zeros((height, width), np.int64)
    repaint = np.broadcast_to(bg_rgb, pixels.shape).astype(np.float32).copy()
    shapes = []
    for slot in range(len(SLOT_NAMES)):
        left, top, right, bottom = slot_box(slot, width, height)
        x0, y0, x1, y1 = int(round(left)), int(round(top)), int(round(right)), int(round(bottom))
        short = min(right - left, bottom - top)
        min_area = 0.5 * 0.5 * (SIZE_RANGE[0] * short) ** 2
        region = largest_component(foreground[y0:y1, x0:x1])
        if region.sum() < min_area:
            continue
        inner = region & np.roll(region, 1, 0) & np.roll(region, -1, 0) & np.roll(region, 1, 1) & np.roll(region, -1, 1)
        core = inner if inner.sum() >= 10 else region
        shape_rgb = np.median(filtered[y0:y1, x0:x1][core], axis=0)
        to_palette = np.linalg.norm(palette[n_bg:] - shape_rgb, axis=-1)
        if to_palette.min() >= np.linalg.norm(shape_rgb - bg_rgb):
            continue  # closer to the background than to any shape colour: a smudge, not a shape
        colour = SHAPE_NAMES[int(to_palette.argmin())]
        # Re-segment at the midpoint between shape and background colours: blur then moves
        # the boundary neither in nor out.
        patch = filtered[y0:y1, x0:x1]
        closer = np.linalg.norm(patch - shape_rgb, axis=-1) < np.linalg.norm(patch - bg_rgb, axis=-1)
        region = largest_component(closer)
        if region.sum() < min_area:
            continue
        ys, xs = np.nonzero(region)
        bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        kind = classify_kind(region)
        side = int(max(bw, bh))
        cx = x0 + (xs.min() + xs.max() + 1) / 2
        cy = y0 + (ys.min() + ys.max() + 1) / 2
        sw, sh = right - left, bottom - top
        dx = (cx - (left + right) / 2) / ((sw - side) / 2) if sw > side else 0.0
        dy = (cy - (top + bottom) / 2) / ((sh - side) / 2) if sh > side else 0.0
        shapes.append(Shape(kind=kind, colour=colour, slot=slot, size=side / short, dx=float(dx), dy=float(dy)))
        segmentation[y0:y1, x0:x1][region] = slot + 1
        repaint[y0:y1, x0:x1][region] = shape_rgb
    return ReadImage(Scene(background=bg_name, shapes=tuple(shapes)), style, segmentation, repaint)


def _interior(segmentation: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(segmentation, radius, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1, 2 * radius + 1))
    return (windows.min(axis=(-1, -2)) == windows.max(axis=(-1, -2)))


def quality_measurements(pixels: np.ndarray, read: ReadImage) -> dict[str, float]:
    """Noise sigma, block-mean rms and blur sigma (pixels) of an image, given how it was read."""
    residual = pixels - read.repaint
    height, width = residual.shape[:2]
    interior = _interior(read.segmentation, max(2, min(height, width) // 32))
    h4, w4 = height // 4 * 4, width // 4 * 4
    blocks = residual[:h4, :w4].reshape(h4 // 4, 4, w4 // 4, 4, 3).transpose(0, 2, 1, 3, 4).reshape(h4 // 4, w4 // 4, 16, 3)
    inside = interior[:h4, :w4].reshape(h4 // 4, 4, w4 // 4, 4).all(axis=(1, 3))
    if inside.sum() >= 4:
        chosen = blocks[inside]                          # N x 16 x 3
        means = chosen.mean(axis=1, keepdims=True)       # N x 1 x 3
        noise = float(np.sqrt(((chosen - means) ** 2).mean() * 16 / 15))
        grey_means = means[:, 0, :].mean(axis=-1)
        blocky = float(np.sqrt(max(0.0, grey_means.var() - noise**2 / 48)))
    else:
        noise = blocky = 0.0

    abs_residual = np.abs(residual).sum(-1)
    baseline = float(abs_residual[interior].mean()) if interior.any() else 0.0
    seg = read.segmentation
    contrast = 0.0
    for a, b in ((np.s_[1:, :], np.s_[:-1, :]), (np.s_[:, 1:], np.s_[:, :-1])):
        edge = seg[a] != seg[b]
        contrast += float(np.abs(read.repaint[a][edge] - read.repaint[b][edge]).sum())
    edge_residual = max(0.0, float(abs_residual.sum()) - baseline * abs_residual.size)
    blur = edge_residual / contrast / BLUR_RESIDUAL_PER_SIGMA if contrast > 0 else 0.0
    return {"noise": noise, "blocky": blocky, "blur": blur}


def blur_thresholds(short_side: int) -> tuple[float, float]:
    """Blur sigmas between none / mild / strong at this image size (the rubric's levels)."""
    mild, strong = rubric.blur_sigma("mild", short_side), rubric.blur_sigma("strong", short_side)
    return 0.5 * mild, float(np.sqrt(mild * strong))


def classify_quality(measurements: dict[str, float], short_side: int) -> tuple[str | None, str | None]:
    """(artefact, level) of the strongest artefact found, or (None, None) for a clean image."""
    # Strong blur leaves a little residual inside regions that looks like mild blockiness, and
    # strong blockiness a little edge residual that looks like mild blur; so the order is:
    # noise, strong blockiness, blur, mild blockiness.
    noise, blocky, blur = measurements["noise"], measurements["blocky"], measurements["blur"]
    blur_mild, blur_strong = blur_thresholds(short_side)
    if noise >= NOISE_THRESHOLDS[1]:
        return "noise", "strong"
    if noise >= NOISE_THRESHOLDS[0]:
        return "noise", "mild"
    if blocky >= BLOCKY_THRESHOLDS[1]:
        return "blocky", "strong"
    if blur >= blur_strong:
        return "blur", "strong"
    if blur >= blur_mild:
        return "blur", "mild"
    if blocky >= BLOCKY_THRESHOLDS[0]:
        return "blocky", "mild"
    return None, None


class OracleJudge:
    """Scores (source, instruction, edited) from pixels with the synthetic world's rubric."""

    def read_edit(self, source, instruction: str) -> tuple[Edit, ReadImage]:
        try:
            edit = parse_instruction(instruction)
        except UnknownInstruction as err:
            raise OracleError(str(err)) from None
        read = read_image(source, detect=False)  # sources are never styled
        try:
            target_slot(edit, read.scene)
        except UnknownInstruction as err:
            raise OracleError(str(err)) from None
        return edit, read

    def judge(self, source, instruction: str, edited) -> dict[str, dict]:
        """``{perspective: {"score": int, "feedback": str}}`` for the three perspectives."""
        edit, src = self.read_edit(source, instruction)
        source_pixels = _as_array(source)
        edited_pixels = _as_array(edited)
        height, width = source_pixels.shape[:2]
        if edited_pixels.shape != source_pixels.shape:
            resized = Image.fromarray(np.clip(edited_pixels, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
            edited_pixels = np.asarray(resized, np.float32)
        out = read_image(edited_pixels)
        artefact, level = classify_quality(quality_measurements(edited_pixels, out), min(width, height))
        return rubric.judge(src.scene, edit, out.scene, out.style, artefact, level, width, height)
