"""The model's image geometry: the pixels an image is handed to OpenVINO GenAI as, the crop grid Phi-3-vision cuts
it into and the prompt positions it takes.  Decoding the bytes people send is bot/media/decoding.py's."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PreparedImage:
    pixels: np.ndarray  # H x W x 3, uint8, C-contiguous RGB
    sha256: str  # of the bytes decoded: the same image is recognised wherever it appears
    width: int
    height: int
    original_width: int
    original_height: int
    original_format: str


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
