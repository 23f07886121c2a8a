"""Photos, image files and still stickers as the copies the bot keeps: decoded, upright, no larger than the model can
use, encoded again.

Why a copy: the file people send may be a 20 MB, 40-megapixel original, whose decoding costs far more memory and
time than the model's few crops need (benchmarks/hostile_files.py measures it).  That is done once, in the file
reader's child process (bot/media/reader.py), and what comes back is what the history stores and what every answer
about the image decodes, the first one included, so prefix caching and retries see identical pixels.  Its long side
is that of the largest crop grid (``MAX_NUM_CROPS``): whatever ``NUM_CROPS`` is set to, now or later, the model
never gets more pixels of an image than that (engine/images.py pads every image to its square grid).  A JPEG stays a
JPEG, at a quality that keeps what the model can see; anything else (screenshots, stickers, scans) becomes a PNG,
which keeps sharp edges and text exactly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from bot.media.decoding import ImageLimits, decode_image
from engine.images import MAX_NUM_CROPS, grid_side

LONG_SIDE = grid_side(MAX_NUM_CROPS)
JPEG_QUALITY = 95
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera's JPEG with a second picture attached


@dataclass(frozen=True)
class Still:
    """The copy of an image the bot keeps."""

    data: bytes
    mime_type: str
    width: int
    height: int


def still(data: bytes) -> Still:
    """The copy of the image in ``data``; raises ImageRejected for what cannot be read."""
    decoded = decode_image(data, ImageLimits(max_side=LONG_SIDE))
    image, out = decoded.image, io.BytesIO()
    if decoded.original_format in JPEG_FORMATS:
        image.save(out, "JPEG", quality=JPEG_QUALITY)
        mime_type = "image/jpeg"
    else:
        image.save(out, "PNG")
        mime_type = "image/png"
    return Still(out.getvalue(), mime_type, image.width, image.height)
