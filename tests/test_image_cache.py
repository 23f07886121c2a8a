"""The decoded-image cache: bounded in bytes of pixels, and sound when worker threads use it at once."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from bot.media.image_cache import PreparedImageCache


def png(width: int, colour: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, width), (colour, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def cached_bytes(cache: PreparedImageCache) -> int:
    """The bytes of pixels it holds (only the tests ask)."""
    return int(cache._images.currsize)


def test_the_cache_stays_within_its_bytes_and_keeps_the_most_recent() -> None:
    photos = [png(200, colour) for colour in range(10)]  # 120,000 bytes of pixels each
    cache = PreparedImageCache(max_bytes=300_000)
    for data in photos:
        cache.get(data, hashlib.sha256(data).hexdigest())
    assert cached_bytes(cache) == 240_000, "two photos fit, the rest went, oldest first"
    latest = photos[-1]
    assert cache.get(latest, hashlib.sha256(latest).hexdigest()) is cache.get(
        latest, hashlib.sha256(latest).hexdigest()
    )
    huge = png(400, 1)  # 480,000 bytes: larger than the whole cache, decoded but not kept
    assert cache.get(huge, hashlib.sha256(huge).hexdigest()).width == 400
    assert cached_bytes(cache) <= 300_000


def test_worker_threads_can_use_the_cache_at_once() -> None:
    photos = [png(64 + colour, colour) for colour in range(40)]
    cache = PreparedImageCache(max_bytes=200_000)

    def use(data: bytes) -> int:
        return cache.get(data, hashlib.sha256(data).hexdigest()).width

    with ThreadPoolExecutor(8) as pool:
        widths = list(pool.map(use, photos * 5))
    assert widths == [64 + colour for colour in range(40)] * 5
    assert 0 < cached_bytes(cache) <= 200_000
