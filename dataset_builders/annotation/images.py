"""Images as the judge receives them: at most ``max_side`` pixels on the longest side, lossless.

An image that is already a PNG, JPEG or WebP file in RGB (or greyscale), upright and small
enough is sent byte for byte as it is: no decoding, nothing lost, and the same file always gives
the same request (and cache key). Anything else (too large, another mode, rotated by EXIF, an
in-memory image) is converted to RGB, downscaled with a Lanczos filter if needed and encoded as
PNG, which keeps every pixel the judge is shown exactly as computed.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_SIDE = 768
PASS_THROUGH_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
PASS_THROUGH_MODES = {"RGB", "L"}
EXIF_ORIENTATION = 0x0112


class ImageError(ValueError):
    """An image that cannot be read."""


@dataclass(frozen=True)
class PreparedImage:
    """The exact bytes sent to the judge, their media type and the pixel size."""

    data: bytes
    mime: str
    width: int
    height: int

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


def read_image(image: Any) -> bytes | Image.Image:
    """The encoded bytes of a path, bytes or datasets image dict; an in-memory image as PIL."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, dict):  # a datasets Image() value: {"bytes": ..., "path": ...}
        if image.get("bytes") is not None:
            return bytes(image["bytes"])
        image = image.get("path")
    if isinstance(image, (str, os.PathLike)):
        try:
            return Path(image).read_bytes()
        except OSError as err:
            raise ImageError(f"cannot read {image}: {err.strerror or err}") from None
    if hasattr(image, "__array__"):
        return Image.fromarray(image)
    raise ImageError(f"expected a path, bytes or a PIL image, got {type(image).__name__}")


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"not a readable image ({err})") from None


def pass_through(data: bytes, max_side: int = DEFAULT_MAX_SIDE) -> PreparedImage | None:
    """The file unchanged when it can be sent as it is (the cheap path), else None.

    The file is checked whole first, so a truncated or corrupt file raises ImageError here
    rather than reaching the judge: a PNG's chunks against their CRCs, other formats by decoding.
    A PNG with EXIF data, or another file whose EXIF turns it, goes the conversion path.
    """
    pil = _open(data)
    mime = PASS_THROUGH_FORMATS.get(pil.format)
    if not mime or pil.mode not in PASS_THROUGH_MODES or max(pil.size) > max_side:
        return None
    try:
        if pil.format == "PNG":
            if "exif" in pil.info:
                return None
            pil.verify()
        else:
            pil.load()
            if pil.getexif().get(EXIF_ORIENTATION, 1) != 1:
                return None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"not a readable image ({err})") from None
    return PreparedImage(data, mime, pil.width, pil.height)


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def convert(image: bytes | Image.Image, max_side: int = DEFAULT_MAX_SIDE) -> PreparedImage:
    """RGB, downscaled to ``max_side`` if larger, encoded as PNG (the expensive path)."""
    try:
        pil = _to_rgb(_open(image) if isinstance(image, bytes) else image)
        width, height = pil.size
        scale = max_side / max(width, height)
        if scale < 1:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            pil = pil.resize(size, Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"not a readable image ({err})") from None
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return PreparedImage(buffer.getvalue(), "image/png", pil.width, pil.height)


def prepare_image(image: Any, max_side: int = DEFAULT_MAX_SIDE) -> PreparedImage:
    """The image as it will be sent: a path, bytes, a datasets image dict, a PIL image or an array.

    Raises ImageError when the image cannot be read.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be 1 or more, got {max_side}")
    raw = read_image(image)
    return (isinstance(raw, bytes) and pass_through(raw, max_side)) or convert(raw, max_side)


def decode_data_url(url: str) -> Image.Image:
    """A ``data:image/...;base64,`` URL back into a PIL image (what a server does)."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ImageError(f"not a base64 image data URL: {url[:40]!r}")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        image.load()
    except (ValueError, UnidentifiedImageError, OSError) as err:
        raise ImageError(f"data URL holds no readable image ({err})") from None
    return image
