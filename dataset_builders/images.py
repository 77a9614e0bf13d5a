"""Image loading for the builders: read, validate, convert to RGB explicitly, encode for Parquet.

Every image a builder writes goes through :func:`load_image`, which

- reports a missing file, an empty (0-byte) or zero-size image, and a truncated or corrupt file
  as an :class:`~editforge.dataset_builders.errors.ItemError` naming the item and the field;
- converts explicitly to RGB (or to 8-bit grey ``L`` for masks, white = the region to edit):
  alpha (RGBA, LA, PA, palette or colour-key transparency) is composited over white for
  pictures and over black for masks; greyscale and bilevel are replicated to three channels;
  16-bit greyscale (``I;16*``, and ``I`` holding values above 255) is scaled to 8 bits with
  ``round(v / 257)``; palette, CMYK, YCbCr, RGBX and HSV go through Pillow's conversion (other
  modes, e.g. 32-bit float, are reported); an EXIF orientation is applied (as ``datasets``
  does when it decodes) and dropped;
- keeps the original bytes when nothing needed converting (an RGB JPEG stays the same JPEG,
  so decoding the dataset gives exactly the pixels of the source file), and otherwise stores a
  lossless PNG of the converted pixels.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import PIL.Image
import PIL.ImageOps

from .errors import CORRUPT_IMAGE, MISSING_FILE, ZERO_SIZE, ItemError

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike]

# Formats whose bytes are kept as they are when the decoded image needs no conversion.
PASSTHROUGH_FORMATS = ("PNG", "JPEG", "WEBP")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WHITE = 255
BLACK = 0


@dataclass(frozen=True)
class StoredImage:
    """An image ready for an ``Image()`` column: encoded bytes and the decoded size."""

    data: bytes
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def feature_value(self) -> dict:
        return {"bytes": self.data, "path": None}


def read_image_bytes(source: ImageSource, *, item_id: str, field: str) -> bytes:
    """The bytes of an image given as bytes or as a path."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if source is None:
        raise ItemError(item_id, MISSING_FILE, "the item has no image here", field)
    path = Path(source)
    if not path.exists():
        raise ItemError(item_id, MISSING_FILE, f"{path} does not exist", field)
    if not path.is_file():
        raise ItemError(item_id, MISSING_FILE, f"{path} is not a file", field)
    try:
        return path.read_bytes()
    except OSError as err:
        raise ItemError(item_id, MISSING_FILE, f"cannot read {path}: {err.strerror or err}", field) from None


def load_image(source: ImageSource, *, item_id: str, field: str, mask: bool = False) -> StoredImage:
    """Validate and convert one image (RGB, or ``L`` when ``mask``). Raises ItemError."""
    data = read_image_bytes(source, item_id=item_id, field=field)
    if not data:
        raise ItemError(item_id, ZERO_SIZE, "the image file is empty (0 bytes)", field)
    declared = _declared_size(data)
    if declared is not None and 0 in declared:
        raise ItemError(item_id, ZERO_SIZE, f"the image is {declared[0]}x{declared[1]} pixels", field)
    image = _decode(data, item_id=item_id, field=field)
    if image.width == 0 or image.height == 0:
        raise ItemError(item_id, ZERO_SIZE, f"the image is {image.width}x{image.height} pixels", field)

    target_mode = "L" if mask else "RGB"
    oriented = image.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None
    if (
        image.mode == target_mode
        and not oriented
        and getattr(image, "n_frames", 1) == 1
        and image.format in PASSTHROUGH_FORMATS
        and "transparency" not in image.info
    ):
        return StoredImage(data, image.width, image.height)

    if oriented:
        image = PIL.ImageOps.exif_transpose(image)
    try:
        converted = to_mask(image) if mask else to_rgb(image)
    except ValueError as err:
        raise ItemError(item_id, CORRUPT_IMAGE, str(err), field) from None
    return StoredImage(encode_png(converted), converted.width, converted.height)


def _decode(data: bytes, *, item_id: str, field: str) -> PIL.Image.Image:
    """Open and fully decode, so that truncation shows here rather than at training time."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # checks chunk structure and CRCs (PNG) that load() does not
        image = PIL.Image.open(io.BytesIO(data))
        image.load()
    except PIL.UnidentifiedImageError:
        raise ItemError(item_id, CORRUPT_IMAGE, "not an image file Pillow can read", field) from None
    except PIL.Image.DecompressionBombError as err:
        raise ItemError(item_id, CORRUPT_IMAGE, f"refused as a decompression bomb ({err})", field) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        raise ItemError(item_id, CORRUPT_IMAGE, f"truncated or corrupt image ({err})", field) from None
    return image


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """The size a PNG or GIF header declares (Pillow refuses to open a zero-size one at all)."""
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _has_alpha(image: PIL.Image.Image) -> bool:
    return image.mode in ALPHA_MODES or "transparency" in image.info


def _flatten_alpha(image: PIL.Image.Image, background: int) -> PIL.Image.Image:
    """Composite over a uniform grey level; returns RGB."""
    rgba = image.convert("RGBA")
    base = PIL.Image.new("RGBA", rgba.size, (background, background, background, 255))
    return PIL.Image.alpha_composite(base, rgba).convert("RGB")


def _sixteen_to_eight(image: PIL.Image.Image) -> PIL.Image.Image:
    """16-bit (or 32-bit integer) greyscale to 8-bit ``L``: ``round(v / 257)``, 65535 -> 255.

    A 32-bit ``I`` image whose values all fit in 0..255 is taken as 8-bit data as it is.
    """
    values = np.asarray(image, dtype=np.int64)
    if image.mode == "I" and values.size and values.min() >= 0 and values.max() <= 255:
        eight = values
    else:
        eight = np.rint(np.clip(values, 0, 65535) / 257.0)
    return PIL.Image.fromarray(eight.astype(np.uint8), mode="L")


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Explicit conversion of any supported mode to 8-bit RGB (see the module docstring)."""
    if image.mode == "RGB" and not _has_alpha(image):
        return image
    if _has_alpha(image):
        return _flatten_alpha(image, WHITE)
    if image.mode in SIXTEEN_BIT_MODES:
        return _sixteen_to_eight(image).convert("RGB")
    if image.mode in ("L", "1", "P", "CMYK", "YCbCr", "RGBX", "HSV"):
        return image.convert("RGB")
    raise ValueError(f"unsupported image mode {image.mode!r}")


def to_mask(image: PIL.Image.Image) -> PIL.Image.Image:
    """Explicit conversion of a mask to 8-bit grey ``L`` (white = region to edit)."""
    if image.mode == "L" and not _has_alpha(image):
        return image
    if _has_alpha(image):
        return _flatten_alpha(image, BLACK).convert("L")
    if image.mode in SIXTEEN_BIT_MODES:
        return _sixteen_to_eight(image)
    if image.mode in ("RGB", "1", "P", "CMYK", "YCbCr", "RGBX"):
        return image.convert("L")
    raise ValueError(f"unsupported mask mode {image.mode!r}")


def encode_png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
