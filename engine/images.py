"""Whatever bytes people send, turned into upright 8-bit RGB arrays the model can take, or a friendly refusal.

People send phone photos with EXIF rotation, screenshots with transparency, scans in CMYK,
16-bit PNGs, animated GIFs, truncated uploads and, now and then, a zip file named photo.jpg or a
decompression bomb.  Everything here runs before the model sees an image, and nothing here may raise
anything but ``ImageRejected``, whose message is written for the person asking.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

SUPPORTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"
TOO_LARGE_TO_OPEN = "That image is too large to open safely. Please send a smaller one."


class ImageRejected(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024  # the largest file a bot may download
    max_pixels: int = 40_000_000  # checked from the header, before any pixel is decoded
    max_side: int = 2688  # 8 x 336: Phi-3-vision's 16-crop layout never needs more
    min_side: int = 8  # smaller images are enlarged so resizing code never meets a 0-pixel side


@dataclass(frozen=True)
class PreparedImage:
    pixels: np.ndarray  # H x W x 3, uint8, C-contiguous RGB
    sha256: str  # of the bytes decoded: the same image is recognised wherever it appears
    width: int
    height: int
    original_width: int
    original_height: int
    original_format: str


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
        raise ImageRejected("That file is empty. Please send the photo again.", "empty")
    if len(data) > limits.max_bytes:
        megabytes = limits.max_bytes // (1024 * 1024)
        raise ImageRejected(f"That image is larger than {megabytes} MB. Please send a smaller one.", "too_large_bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageRejected("That image has no pixels. Please send another one.", "too_small")
            if width * height > limits.max_pixels:
                raise ImageRejected(
                    f"That image is too large ({width}x{height} pixels). Please send one under "
                    f"{limits.max_pixels // 1_000_000} megapixels.",
                    "too_many_pixels",
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
        raise ImageRejected(TOO_LARGE_TO_OPEN, "too_many_pixels") from error
    except MemoryError as error:  # within the header's limit, but more than the process may take
        raise ImageRejected(TOO_LARGE_TO_OPEN, "out_of_memory") from error
    except UnidentifiedImageError as error:
        raise ImageRejected(
            f"That file is not an image I can read. Please send a {SUPPORTED} photo.", "not_an_image"
        ) from error
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError, TypeError) as error:
        log.info("image rejected: %s: %s", type(error).__name__, error)
        raise ImageRejected("That image seems damaged or incomplete. Please send it again.", "truncated") from error
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


CROP = 336  # Phi-3-vision's crop side
MAX_NUM_CROPS = 16  # the most crops NUM_CROPS allows: a 4 x 4 grid, 1344 pixels a side
TOKENS_PER_CROP = 144  # 24 x 24 CLIP patches, merged 2 x 2
ROW_TOKENS = 12  # separators per row of crops: one after each of its 12 rows of merged patches


def crop_grid(width: int, height: int, num_crops: int, *, single_precision: bool = False) -> tuple[int, int]:
    """Rows and columns of 336-pixel crops Phi-3-vision's HD transform cuts an image into.

    The image is scaled so that the widest grid of at most ``num_crops`` crops covers it, aspect ratio kept;
    the short side is then padded up to whole crops.  Phi-3-vision's processor computes this in double
    precision; ``single_precision`` computes it as openvino-genai 2026.4 does, in float32, which for rare
    sizes gives another grid (1344 x 1009 at 16 crops: 3 x 4 instead of 4 x 4).
    """
    real: type[float] | type[np.float32] = np.float32 if single_precision else float
    long_side, short_side = max(width, height), min(width, height)
    ratio = real(long_side) / real(short_side)
    scale = 1
    while real(scale + 1) * math.ceil(real(scale + 1) / ratio) <= num_crops:
        scale += 1
    across = math.ceil(int(real(scale * CROP) / ratio) / CROP)
    return (across, scale) if width >= height else (scale, across)


def grid_side(num_crops: int) -> int:
    """Pixels on a side of the largest square grid of crops within ``num_crops``: an image whose long side is
    this reaches the model without being scaled (the engine pads every image to its square grid: for_genai)."""
    return CROP * crop_grid(1, 1, num_crops)[0]


def grid_tokens(rows: int, columns: int) -> int:
    """Prompt positions Phi-3-vision gives an image of ``rows`` x ``columns`` crops.

    Each crop and the global view take 144 merged patches; each row of merged patches, in the grid and in the
    global view, ends in a separator, and one more separator sits between the grid and the global view.
    """
    return (rows * columns + 1) * TOKENS_PER_CROP + 1 + (rows + 1) * ROW_TOKENS


def _handed_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """Width and height of what the engine hands GenAI: the image when GenAI's grid is square, else its square."""
    rows, columns = crop_grid(width, height, num_crops, single_precision=True)
    if rows == columns:
        return width, height
    side = max(width, height)
    return side, side


def for_genai(pixels: np.ndarray, num_crops: int) -> np.ndarray:
    """The pixels to hand OpenVINO GenAI: padded with white to a square when the crop grid is not square.

    openvino-genai 2026.4 records a Phi-3-vision image's size as (width, height) where it expects (height,
    width), so the crops of a non-square grid (a 4:3 photo at NUM_CROPS=16 is 3 x 4, a phone screenshot at 4
    is 2 x 1) reach the model in the wrong places, and the image gets 12 x (columns - rows) prompt positions
    more than Phi-3-vision gives it: 12 too many for the 3 x 4 photo, 12 too few for the 2 x 1 screenshot
    (tests/test_preprocessing_fidelity.py checks that this is still so).  Only a square grid is immune, and
    the only square grid the HD transform makes is the largest within ``num_crops`` (any smaller one would
    leave room for a wider grid), so keeping the whole picture means this padding: white, as Phi-3-vision's
    own processor pads, centred.  The README ("Long images are padded to a square crop grid") compares it
    with shrinking and cropping.
    """
    height, width = pixels.shape[:2]
    side_width, side_height = _handed_size(width, height, num_crops)
    if (side_width, side_height) == (width, height):
        return pixels
    canvas = np.full((side_height, side_width, 3), 255, dtype=np.uint8)
    top, left = (side_height - height) // 2, (side_width - width) // 2
    canvas[top : top + height, left : left + width] = pixels
    return canvas


def image_tokens(width: int, height: int, num_crops: int) -> int:
    """Prompt positions GenAI gives an image of ``width`` x ``height`` that the engine hands it through for_genai.

    This is what the ``<|image_N|>`` placeholder expands to.  The grid GenAI then sees is square, so its
    height/width swap does not change the count.
    """
    rows, columns = crop_grid(*_handed_size(width, height, num_crops), num_crops)
    return grid_tokens(rows, columns)
