"""Saying no without it costing the bot: every refusal is sent at once or not at all, and each person hears each
refusal of access at most once in a few minutes.

A refusal is cheap for its sender and was expensive for the bot: each one waited in Telegram's rate limit
(bot/output/pace.py) while holding one of the bot's update slots, so a stranger mentioning the bot over and over in
a group of their own held every chat up (benchmarks/flood.py measures it).  Now a refusal that cannot be sent
right away is dropped (counted, and logged once in a while), a repeated one is not sent again within
``QUIET_SECONDS``, and the memory of who was told is bounded.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from cachetools import TTLCache
from telegram import CallbackQuery, Message
from telegram.error import TelegramError

from bot.output.chat import reply
from bot.output.pace import Skipped

log = logging.getLogger(__name__)

QUIET_SECONDS = 180.0  # the same refusal to the same person at most this often
REMEMBERED = 10_000  # people and refusals remembered at once; the oldest are forgotten first
DROPPED_LOG_SECONDS = 60.0  # dropped refusals are logged at most once a minute, with their count


@dataclass
class RefusalCounts:
    sent: int = 0
    repeated: int = 0  # not sent: the person heard the same refusal lately
    dropped: int = 0  # not sent: Telegram's rate limit had no room for it


class Refusals:
    def __init__(self, quiet_seconds: float = QUIET_SECONDS) -> None:
        self._told: TTLCache[tuple[int, str], bool] = TTLCache(REMEMBERED, quiet_seconds)
        self._logged: TTLCache[tuple[int, int | None, str], bool] = TTLCache(REMEMBERED, quiet_seconds)
        self.counts = RefusalCounts()
        self._dropped_logged_at = -math.inf

    def fresh(self, person: int, text: str) -> bool:
        """Whether ``person`` may hear ``text`` now; True marks it told."""
        if (person, text) in self._told:
            self.counts.repeated += 1
            return False
        self._told[(person, text)] = True
        return True

    def log(self, person: int, chat_id: int | None, reason: str) -> None:
        """A refused attempt, logged at INFO once per person, chat (None: any chat) and reason in a while (a flood
        of them would fill the log otherwise), at DEBUG after that."""
        level = logging.DEBUG if (person, chat_id, reason) in self._logged else logging.INFO
        self._logged[(person, chat_id, reason)] = True
        where = "" if chat_id is None else f" in chat {chat_id}"
        log.log(level, "refused sender %s%s: %s", person, where, reason)

    async def say(self, message: Message, person: int, text: str) -> None:
        """A refusal of access (not allowed, too fast, not an admin, not the asker): in reply to ``message``
        (quoting it in groups) if ``person`` did not hear it lately and Telegram's budget has room now (one
        dropped for want of room may be said the next time)."""
        if self.fresh(person, text) and not await self.note(message, text):
            self._told.pop((person, text), None)

    async def note(self, message: Message, text: str) -> bool:
        """Why a question cannot be answered (a file the bot cannot read, a busy line): said every time, as
        each one the gate let through counted against its sender's rate, but only if the budget has room now.
        Whether it was sent."""
        try:
            await reply(message, text, pace="now_or_never")
        except Skipped:
            self._dropped()
        except TelegramError as error:
            log.info("could not send a refusal in chat %s: %s", message.chat_id, error)
        else:
            self.counts.sent += 1
            return True
        return False

    @staticmethod
    async def answer(query: CallbackQuery, text: str) -> None:
        """A button press is always answered, or the person's client shows a spinner; the answer costs nothing
        of a chat's rate limit, so it is never held back."""
        try:
            await query.answer(text)
        except TelegramError as error:
            log.info("could not answer a button press: %s", error)

    def _dropped(self) -> None:
        self.counts.dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged_at >= DROPPED_LOG_SECONDS:
            self._dropped_logged_at = now
            log.warning(
                "refusals are being dropped: Telegram's rate limit has no room for them (%d dropped since the start)",
                self.counts.dropped,
            )
