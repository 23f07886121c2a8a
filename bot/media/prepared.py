"""The images a question or a conversation shows the model, decoded off the event loop and kept for follow-ups
(bot/media/image_cache.py).

The bot's process decodes only the copies its file reader made; an image an older version stored as it was
sent is made into one first, in the reader's child (bot/media/intake.py's ``bounded``), so a file from outside
never reaches a decoder in the bot's own process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bot.history import HistoryStore, NewImage, StoredImage
from bot.media.decoding import ImageRejected
from bot.media.image_cache import PreparedImageCache
from bot.media.intake import bounded
from bot.media.reader import MediaError, MediaReader
from engine.images import PreparedImage


class PreparedImages:
    def __init__(self, history: HistoryStore, media: MediaReader, cache: PreparedImageCache) -> None:
        self._history = history
        self._media = media
        self._cache = cache

    async def one(self, image: NewImage | StoredImage) -> PreparedImage:
        """The image decoded (or found in the cache); raises ImageRejected."""
        if not image.bounded:
            try:
                image = await bounded(self._history, self._media, image)
            except MediaError as error:
                raise ImageRejected(error.reason, **error.data) from error
        return await asyncio.to_thread(self._cache.get, image.data, image.sha256)

    async def all(self, images: Sequence[NewImage | StoredImage]) -> list[PreparedImage]:
        """``one`` for each, in order; raises ImageRejected."""
        return [await self.one(image) for image in images]
