"""Albums arrive as separate messages sharing a ``media_group_id``; they are answered once, together.

Telegram sends the parts within a second or so and gives no "last part" marker, so parts are collected until
``quiet_seconds`` pass without a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from telegram import Message, Update

AlbumHandler = Callable[[list[Message]], Coroutine[Any, Any, None]]
Start = Callable[[Coroutine[Any, Any, None], Update], object]
PARTS = 10  # the most an album has


class AlbumCollector:
    """``start``: runs an album's question as work the bot owns (bot/running/background.py), with the update of
    its first part, whose sender the error handler tells should the question fail."""

    def __init__(self, on_album: AlbumHandler, start: Start, quiet_seconds: float = 1.0) -> None:
        self._on_album = on_album
        self._start = start
        self._quiet = quiet_seconds
        self._parts: dict[str, list[tuple[Message, Update]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def add(self, message: Message, update: Update) -> None:
        """``message``: a part, which came in ``update``.  Parts past ``PARTS``, as many as Telegram lets an album
        have, are not kept."""
        group = str(message.media_group_id)
        parts = self._parts.setdefault(group, [])
        if len(parts) < PARTS:
            parts.append((message, update))
        if group in self._timers:
            self._timers[group].cancel()
        loop = asyncio.get_running_loop()
        self._timers[group] = loop.call_later(self._quiet, self._flush, group)

    def _flush(self, group: str) -> None:
        self._timers.pop(group, None)
        parts = sorted(self._parts.pop(group, []), key=lambda part: part[0].message_id)
        self._start(self._on_album([message for message, _ in parts]), parts[0][1])
