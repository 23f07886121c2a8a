"""One streamed answer in a chat: the typing indicator and a placeholder at once, the answer as it is written,
then its final formatting.

It picks the view the chat gets while the answer is written: in a private chat a draft while Telegram offers them
(bot/output/drafts.py), otherwise a message edited as text arrives (bot/output/edits.py).  Both are views over one
delivery policy (bot/output/delivery.py), which records every step before showing it and delivers the final text
as messages; neither shows anything while flood control holds the chat, nor once the final text is on its way.
"""

from __future__ import annotations

import asyncio
import logging

from telegram import Bot, InlineKeyboardMarkup
from telegram.constants import ChatAction
from telegram.error import TelegramError

from bot.output.delivery import Delivery, Record
from bot.output.drafts import Drafts, DraftView
from bot.output.edits import EditView

log = logging.getLogger(__name__)

FINAL_DELIVERY_SECONDS = 300.0


class ReplyStream:
    """``message_ids``: given when the stream takes over messages shown before (recovery after a restart);
    ``drafts``: given in private chats, where the answer streams as a draft while they are available;
    ``stop_button``: shown under the part being written; ``stopping``: set at shutdown, the final text stops
    waiting; ``patience``: how long the final text may wait for Telegram before it is left for the next start.

    What is shown while the answer is written (the placeholder, statuses, drafts, streaming edits) is sent only
    when Telegram's rate limit has room at that moment (bot/output/pace.py): a skipped one is carried by the next, so
    a busy group never queues them and nothing waits behind them; the final text waits for its turn."""

    def __init__(
        self,
        bot: Bot,
        chat_id: int,
        record: Record,
        *,
        reply_to: int | None = None,
        thread_id: int | None = None,
        interval: float = 1.0,
        message_ids: list[int] | None = None,
        stopping: asyncio.Event | None = None,
        patience: float = FINAL_DELIVERY_SECONDS,
        drafts: Drafts | None = None,
        stop_button: InlineKeyboardMarkup | None = None,
    ) -> None:
        self._delivery = Delivery(
            bot,
            chat_id,
            record,
            reply_to,
            thread_id,
            message_ids if message_ids is not None else [],
            stopping if stopping is not None else asyncio.Event(),
            patience,
        )
        edits = EditView(self._delivery, interval, stop_button)
        drafting = drafts is not None and drafts.available and not message_ids  # messages taken over stay messages
        self._draft = DraftView(self._delivery, drafts, edits) if drafts is not None and drafting else None
        self._view: DraftView | EditView = edits if self._draft is None else self._draft

    @property
    def message_ids(self) -> list[int]:
        """Every message the answer occupies, a part each."""
        return self._delivery.message_ids

    async def start(self, text: str) -> None:
        """Placeholder at once, with the typing indicator, so the user knows the bot heard them: a message
        saying ``text``, or an empty draft, which Telegram shows as its own "Thinking…"."""
        delivery = self._delivery
        try:
            await delivery.bot.send_chat_action(
                delivery.chat_id, ChatAction.TYPING, message_thread_id=delivery.thread_id
            )
        except TelegramError as error:
            log.debug("chat action failed: %s", error)
        await self._view.start(text)

    async def status(self, text: str) -> None:
        """Queue position and the like: shown only while no answer text has arrived yet."""
        self._delivery.check_open()
        if not (self._delivery.closed or self._delivery.flooded()):
            await self._view.status(text)

    def head(self, header: str) -> None:
        """``header`` goes above the answer from now on, in every view and in the final text, but not into the
        answer's record: what the person said, heard by the speech model."""
        self._delivery.header = header

    async def update(self, text: str) -> None:
        """Show the answer so far, if the view's pace allows; cheap to call on every chunk."""
        self._delivery.check_open()
        if not (self._delivery.closed or self._delivery.flooded()) and text.strip():
            await self._view.update(text)

    async def finish(self, text: str, footer: str = "", markup: InlineKeyboardMarkup | None = None) -> list[int]:
        """The final, formatted answer, recorded first; returns the ids of every message it occupies.  ``markup``
        goes under its last part, where the Stop button was.

        Raises Undeliverable when the chat cannot receive it, Postponed when it has to wait for the next start."""
        await self.close()
        return await self._delivery.finish(text, footer, markup)

    async def close(self) -> None:
        """Stops refreshing the draft; the stream's owner calls it however the answer ends."""
        if self._draft is not None:
            await self._draft.close()
