"""Whatever bytes people send, turned into upright 8-bit RGB arrays the model can take, or a refusal.

People send phone photos with EXIF rotation, screenshots with transparency, scans in CMYK,
16-bit PNGs, animated GIFs, truncated uploads and, now and then, a zip file named photo.jpg or a
decompression bomb.  Everything here runs before the model sees an image, and nothing here may raise
anything but ``ImageRejected``, whose reason and data bot/texts.py says to the person asking.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bot.media.refusal import Refusal
from engine.images import PreparedImage

log = logging.getLogger(__name__)


class ImageRejected(Refusal):
    """An image that cannot be read, or may not be."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024  # the largest file a bot may download
    max_pixels: int = 40_000_000  # checked from the header, before any pixel is decoded
    max_side: int = 2688  # 8 x 336: Phi-3-vision's 16-crop layout never needs more
    min_side: int = 8  # smaller images are enlarged so resizing code never meets a 0-pixel side


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode; transparency becomes white, as Phi-3's processor pads with white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _fit(image: Image.Image, limits: ImageLimits) -> Image.Image:
    width, height = image.size
    longest = max(width, height)
    if longest > limits.max_side:
        scale = limits.max_side / longest
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    width, height = image.size
    if min(width, height) < limits.min_side:
        scale = limits.min_side / min(width, height)

        def side(length: int) -> int:  # a 1 x 2000 sliver may not grow past max_side: its aspect gives way
            return min(limits.max_side, max(limits.min_side, round(length * scale)))

        image = image.resize((side(width), side(height)))
    return image


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit RGB picture within the limits, and what the file said it was."""

    image: Image.Image
    original_width: int
    original_height: int
    original_format: str


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """The picture in ``data``, upright, in 8-bit RGB, its long side at most ``limits.max_side``; raises only
    ImageRejected."""
    if not data:
        raise ImageRejected("empty")
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_large_bytes", megabytes=limits.max_bytes // (1024 * 1024))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageRejected("too_small")
            if width * height > limits.max_pixels:
                raise ImageRejected(
                    "too_many_pixels", width=width, height=height, megapixels=limits.max_pixels // 1_000_000
                )
            original_format = image.format or "unknown"
            if getattr(image, "is_animated", False):
                image.seek(0)
            if original_format == "JPEG":
                image.draft("RGB", (limits.max_side, limits.max_side))  # decode big JPEGs at reduced size
            image.load()
            image = ImageOps.exif_transpose(image) or image
            image = _fit(_to_rgb(image), limits)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected("bomb") from error
    except MemoryError as error:  # within the header's limit, but more than the process may take
        raise ImageRejected("out_of_memory") from error
    except UnidentifiedImageError as error:
        raise ImageRejected("not_an_image") from error
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError, TypeError) as error:
        log.info("image rejected: %s: %s", type(error).__name__, error)
        raise ImageRejected("truncated") from error
    return DecodedImage(image, width, height, original_format)


def prepare_image(data: bytes, limits: ImageLimits = ImageLimits()) -> PreparedImage:
    decoded = decode_image(data, limits)
    image = decoded.image
    pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    return PreparedImage(
        pixels=pixels,
        sha256=hashlib.sha256(data).hexdigest(),
        width=image.width,
        height=image.height,
        original_width=decoded.original_width,
        original_height=decoded.original_height,
        original_format=decoded.original_format,
    )
