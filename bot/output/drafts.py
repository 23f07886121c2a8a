"""An answer streamed as a draft in a private chat, then sent as new messages.

``sendMessageDraft`` is Telegram's own streaming: it animates the growing text and costs no edits.  A draft lasts
about 30 s unless refreshed and vanishes when the bot sends a message, so an unchanged draft is sent again while
the answer waits in line or the model reads a photo.  A draft Telegram refuses (a 400, or an older self-hosted Bot
API server that does not know the method) turns the answer into edits (bot/output/edits.py), with nothing lost.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter, TelegramError

from bot.output.delivery import Delivery
from bot.output.edits import EditView
from bot.output.formatting import TELEGRAM_TEXT_LIMIT, plain_parts
from bot.output.pace import Skipped

log = logging.getLogger(__name__)

DRAFT_REFRESH_SECONDS = 20.0  # a draft unchanged this long is sent again: Telegram drops it after about 30 s


@dataclass
class Drafts:
    """Whether private chats' answers stream as drafts, and how often a draft changes; one per bot, shared by
    its streams, so that a Bot API server without ``sendMessageDraft`` is found out by one answer and the later
    ones edit from the start."""

    available: bool = True
    interval: float = 0.4

    def unsupported(self, error: TelegramError) -> None:
        if self.available:
            log.warning("the Bot API server does not know sendMessageDraft (%s); answers are edited instead", error)
        self.available = False


class DraftView:
    """One answer's draft, at most one per ``Drafts.interval`` and none when the text shown did not change;
    ``fallback``: the edits the answer goes on in once Telegram refuses its draft."""

    def __init__(self, delivery: Delivery, drafts: Drafts, fallback: EditView) -> None:
        self._delivery = delivery
        self._drafts = drafts
        self._fallback = fallback
        self._live = True  # False once Telegram refused this answer's draft
        self._id = secrets.randbelow(2**31 - 1) + 1  # a new id per answer: never animates another's draft
        self._drafted = ""  # the text the draft shows
        self._sent_at = 0.0  # when a draft was last sent, whatever came of it
        self._next = 0.0  # no draft before then
        self._refresher: asyncio.Task[None] | None = None

    async def start(self, text: str) -> None:
        """An empty draft, which Telegram shows as its own "Thinking…", kept until the answer ends; a message
        saying ``text`` if Telegram refuses it."""
        if await self._show(""):
            self._refresher = asyncio.create_task(self._refresh())
        else:
            await self._fallback.start(text)

    async def status(self, text: str) -> None:
        if not self._live:
            await self._fallback.status(text)
        elif not await self._show(self._delivery.header + text):
            await self._fallback.start(text)

    async def update(self, text: str) -> None:
        """Past the 4096-unit limit the draft shows the part being written; the final text sends them all."""
        if not self._live:
            await self._fallback.update(text)
            return
        if time.monotonic() < self._next:
            return
        draft = plain_parts(self._delivery.header + text, TELEGRAM_TEXT_LIMIT)[-1].text
        if draft == self._drafted:
            return
        await self._delivery.save(text)
        if await self._show(draft):
            self._next = time.monotonic() + self._drafts.interval
        else:
            await self._fallback.update(text)

    async def close(self) -> None:
        """Stops refreshing the draft: none may arrive after the final text, it would show again for 30 s."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None

    async def _show(self, text: str) -> bool:
        """Shows ``text`` as the draft; False once Telegram refused drafts for this answer, which then goes on
        in messages (the caller shows the text there).  Flood control and network trouble are passed over:
        the next draft carries the text."""
        delivery = self._delivery
        self._sent_at = time.monotonic()
        try:
            await delivery.bot.send_message_draft(
                delivery.chat_id,
                self._id,
                text,
                message_thread_id=delivery.thread_id,
                rate_limit_args="now_or_never",  # type: ignore[call-arg]
            )
        except RetryAfter as error:
            delivery.flood(error)
        except Forbidden:
            delivery.blocked = True
        except (BadRequest, InvalidToken) as error:  # InvalidToken: PTB's name for a 404, "method not found"
            self._live = False
            self._fallback.next_edit = self._next  # the answer keeps one pace: the first edit waits as a draft would
            if isinstance(error, InvalidToken):
                self._drafts.unsupported(error)
            else:
                log.warning("draft refused in chat %s (%s); this answer is edited instead", delivery.chat_id, error)
            return False
        except Skipped:
            log.debug("no room for a draft in chat %s now; the next one carries the text", delivery.chat_id)
        except TelegramError as error:
            log.info("draft failed (%s); the next one carries the text", error)
        else:
            self._drafted = text
        return True

    async def _refresh(self) -> None:
        """Sends the draft again before Telegram drops it, while the answer waits in line or the model reads a
        photo; a refusal leaves the text to the next update or the final text, in messages."""
        delivery = self._delivery
        while True:
            due = max(self._sent_at + DRAFT_REFRESH_SECONDS, delivery.flood_until)
            await asyncio.sleep(max(due - time.monotonic(), 0.0))
            if not self._live or delivery.closed or delivery.blocked:
                return
            if time.monotonic() >= max(self._sent_at + DRAFT_REFRESH_SECONDS, delivery.flood_until):
                await self._show(self._drafted)
