"""Checking and decoding one image file: what it is, whether TensorFlow can decode it as
stored, and its RGB rendering when it cannot.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from typing import Optional

from components.core.data.discovery import SourceFile
from components.core.io.progress import Progress

log = logging.getLogger("tlpipe.data")

# A picture with this few distinct colours is a graphic (an "image not found" placeholder, a
# logo, a blank), not a photo: kept, but listed in the data report for a person to look at.
PLACEHOLDER_COLOURS = 64

STORED_AS_IS = ("JPEG", "PNG")  # formats TensorFlow decodes; other formats are re-encoded as PNG


@dataclass
class CheckedImage:
    """A source file that decoded; sha256 is of the file's bytes. conversion: how it was turned
    into 8-bit RGB ("" when stored as is), e.g. "CMYK JPEG -> RGB PNG"."""

    source: SourceFile
    sha256: str
    width: int
    height: int
    conversion: str
    colours: int = 0  # distinct colours when at most PLACEHOLDER_COLOURS, else 0 (a photo)


def check_image(source: SourceFile) -> tuple[Optional[CheckedImage], str]:
    """Decodes a file fully. Returns (CheckedImage, "") or (None, reason it is unusable)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(source.path, "rb") as handle:
            content = handle.read()
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            conversion = _conversion_needed(image)
            width, height = image.size
            colours = len(_as_rgb(image).getcolors(PLACEHOLDER_COLOURS) or ())
    except UnidentifiedImageError:
        return None, "not an image file (no known image format)"
    except Exception as error:  # truncated, corrupt, decompression bomb, unreadable...
        return None, f"cannot be decoded: {type(error).__name__}: {error}"
    sha = hashlib.sha256(content).hexdigest()
    return CheckedImage(source, sha, width, height, conversion, colours), ""


def identify_image(source: SourceFile) -> tuple[Optional[CheckedImage], str]:
    """Like check_image, reading only the header (no pixel is decoded): cheap enough for a
    preflight, but a truncated file still passes. conversion and colours are left empty."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(source.path, "rb") as handle:
            content = handle.read()
        with Image.open(io.BytesIO(content)) as image:
            width, height = image.size
    except UnidentifiedImageError:
        return None, "not an image file (no known image format)"
    except Exception as error:
        return None, f"cannot be read: {type(error).__name__}: {error}"
    return CheckedImage(source, hashlib.sha256(content).hexdigest(), width, height, ""), ""


def _conversion_needed(image) -> str:
    orientation = image.getexif().get(0x0112, 1)
    if image.format in STORED_AS_IS and image.mode == "RGB" and orientation == 1:
        return ""
    rotated = " rotated by EXIF" if orientation != 1 else ""
    return f"{image.mode} {image.format}{rotated} -> RGB PNG"


def rgb_bytes(path: str) -> bytes:
    """The image at `path` as PNG-encoded 8-bit RGB (see `rgb_image`)."""
    buffer = io.BytesIO()
    rgb_image(path).save(buffer, format="PNG")
    return buffer.getvalue()


def rgb_image(path: str):
    """The image at `path` as an 8-bit RGB PIL image, upright per its EXIF orientation.

    Greyscale and 16-bit images are scaled to 8 bits, alpha is composited on white, CMYK and
    palette images are converted, animations keep their first frame.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return _as_rgb(ImageOps.exif_transpose(image))


def _as_rgb(image):
    """A decoded PIL image as 8-bit RGB: 16-bit and 32-bit greyscale scaled from their real
    range (0-65535 when any value is above 255, else 0-255), alpha composited on white."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if pixels.max() > 255 else 255.0
        image = Image.fromarray(np.round(pixels * (255.0 / top)).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and
                                              "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def check_all(files: list[SourceFile], check=check_image,
              verbose: bool = True) -> tuple[list[CheckedImage], list[dict]]:
    """Checks every file with `check` (check_image: decodes it fully; identify_image: reads
    its header), with progress logs and a warning per skipped file when `verbose`. Exact
    duplicates within a class are kept once.

    Returns (usable images, skipped files as {"path", "class", "reason"}).
    """
    usable, skipped, seen = [], [], {}
    progress = Progress(log, "checked files", len(files))
    for source in files:
        checked, reason = check(source)
        if checked is not None:
            first = seen.setdefault((source.label, checked.sha256), source.relpath)
            if first != source.relpath:
                checked, reason = None, f"exact duplicate of {first} (kept once)"
        if checked is None:
            skipped.append({"path": source.relpath, "class": source.label, "reason": reason})
            if verbose:
                log.warning("skipping %s: %s", source.relpath, reason)
        else:
            usable.append(checked)
        progress.advance()
    return usable, skipped
