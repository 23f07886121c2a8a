"""Decoded images kept for follow-ups: decoding a photo again for every question of a long conversation would
cost more than the question itself.  Only the bot's own copies are decoded here (bot/media/stills.py: at most 1344
pixels a side, so at most about 5 MB of pixels each); the cache is bounded in bytes of pixels and is used from
worker threads, so it takes a lock."""

from __future__ import annotations

import contextlib
import threading

from cachetools import LRUCache

from bot.media.decoding import ImageLimits, prepare_image
from engine.images import PreparedImage


class PreparedImageCache:
    def __init__(self, max_bytes: int) -> None:
        self._images: LRUCache[str, PreparedImage] = LRUCache(max_bytes, getsizeof=lambda image: image.pixels.nbytes)
        self._lock = threading.Lock()

    def get(self, data: bytes, sha256: str) -> PreparedImage:
        """The decoded image for these bytes (``sha256`` is theirs); raises ImageRejected like prepare_image."""
        with self._lock:
            found = self._images.get(sha256)
        if found is not None:
            return found
        image = prepare_image(data, ImageLimits())  # outside the lock: other threads need not wait for it
        with self._lock, contextlib.suppress(ValueError):  # larger than the whole cache: not kept
            self._images[sha256] = image
        return image
