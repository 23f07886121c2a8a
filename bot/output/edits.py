"""An answer written into messages as it grows: a placeholder at once, then edits as text arrives.

Groups have no drafts, and a private chat whose draft Telegram refuses goes on here, so this view keeps the rules
that make edits cheap: at most one edit per ``interval`` (Telegram throttles chats that edit faster; groups get a
longer interval) and none when the visible text did not change; plain text with a cursor while streaming (a
half-written Markdown answer would not parse), entities only in the final text (bot/output/delivery.py).
"""

from __future__ import annotations

import contextlib
import time

from telegram import InlineKeyboardMarkup

from bot.output.delivery import Delivery, Moved
from bot.output.formatting import TELEGRAM_TEXT_LIMIT, plain_parts

CURSOR = " ▌"


class EditView:
    """``stop_button``: shown under the part being written."""

    def __init__(self, delivery: Delivery, interval: float, stop_button: InlineKeyboardMarkup | None) -> None:
        self._delivery = delivery
        self._interval = interval
        self._stop_button = stop_button
        self.next_edit = 0.0  # no edit before then; a draft that falls back to edits hands over its own pace

    async def start(self, text: str) -> None:
        """A message saying ``text``; best effort, as every message shown while the answer is written: the first
        update places it otherwise."""
        with contextlib.suppress(Moved):
            await self._delivery.place_now(0, self._delivery.header + text, self._stop_button)
        self.next_edit = time.monotonic() + self._interval

    async def status(self, text: str) -> None:
        """The placeholder says ``text`` instead."""
        if len(self._delivery.message_ids) == 1:
            with contextlib.suppress(Moved):  # the next update sends the answer to the new chat
                await self._delivery.edit_now(0, self._delivery.header + text, self._stop_button)

    async def update(self, text: str) -> None:
        """The answer so far with a cursor, in as many parts as it needs, if the interval allows."""
        if time.monotonic() < self.next_edit:
            return
        parts = [part.text for part in plain_parts(self._delivery.header + text + CURSOR, TELEGRAM_TEXT_LIMIT)]
        if parts == self._delivery.shown:
            return
        await self._delivery.save(text)
        await self._delivery.show_now(parts, self._stop_button)
        self.next_edit = time.monotonic() + self._interval
