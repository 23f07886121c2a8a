"""Albums arrive as separate messages sharing a ``media_group_id``; they are answered once, together.

Telegram sends the parts within a second or so and gives no "last part" marker, so parts are collected until
``quiet_seconds`` pass without a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from telegram import Message

AlbumHandler = Callable[[list[Message]], Awaitable[None]]


class AlbumCollector:
    def __init__(self, on_album: AlbumHandler, quiet_seconds: float = 1.0) -> None:
        self._on_album = on_album
        self._quiet = quiet_seconds
        self._parts: dict[str, list[Message]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, message: Message) -> None:
        group = str(message.media_group_id)
        self._parts.setdefault(group, []).append(message)
        if group in self._timers:
            self._timers[group].cancel()
        loop = asyncio.get_running_loop()
        self._timers[group] = loop.call_later(self._quiet, self._flush, group)

    def _flush(self, group: str) -> None:
        self._timers.pop(group, None)
        parts = sorted(self._parts.pop(group, []), key=lambda m: m.message_id)
        task = asyncio.get_running_loop().create_task(self._on_album(parts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
