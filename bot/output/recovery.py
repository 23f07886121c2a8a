"""Answers whose Telegram messages must be repairable whatever stops the bot, and their repair at the next start.

While an answer streams, ``AnswerRecord`` saves its text and every message id it occupies before the reply
stream shows them (bot/output/delivery.py), so the database always covers what the chat shows.  After a crash or
kill -9, such answers still show a cursor and a Stop button that no longer work, in every part; after a
shutdown that did not wait for flood control, the final text may not be shown yet.  At the next start each is
finished the way a reply stream finishes: its saved text, formatted, in every part (below what was heard, for a
question asked aloud), with a note ("Interrupted" for one the crash cut short), and no button left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from telegram import Bot
from telegram.error import TelegramError

from bot import texts
from bot.history import HistoryStore, Interrupted
from bot.history.store import StoredStatus
from bot.output.reply_stream import ReplyStream
from bot.output.retries import Postponed, Undeliverable

log = logging.getLogger(__name__)

RECOVERY_SECONDS = 15.0  # start-up does not wait longer than this for flood control; the rest waits a start more


@dataclass
class AnswerRecord:
    """A reply stream's ``record`` for one stored answer; ``status`` is what the answer is stored with."""

    history: HistoryStore
    id: int
    status: StoredStatus = "streaming"

    async def __call__(self, text: str, message_ids: Sequence[int]) -> None:
        await self.history.update_assistant_message(self.id, text, telegram_message_ids=message_ids, status=self.status)


async def finish_interrupted(bot: Bot, history: HistoryStore, answers: Sequence[Interrupted]) -> None:
    """Within ``RECOVERY_SECONDS`` in all, flood control and Telegram's rate limit for a group included: the start
    waits no longer, and what is left unsettled is repaired at the next start."""
    try:
        await asyncio.wait_for(_finish_all(bot, history, answers), RECOVERY_SECONDS)
    except asyncio.TimeoutError:
        log.info("repairing interrupted answers took over %.0f s; the rest waits for a later start", RECOVERY_SECONDS)


async def _finish_all(bot: Bot, history: HistoryStore, answers: Sequence[Interrupted]) -> None:
    give_up_at = time.monotonic() + RECOVERY_SECONDS
    for answer in answers:
        cut = answer.status == "streaming"
        record = AnswerRecord(history, answer.message_id, "cancelled" if cut else answer.status)
        stream = ReplyStream(
            bot,
            answer.chat_id,
            record,
            reply_to=answer.question_message_id,  # for an answer shown only as a draft: its first message
            thread_id=answer.thread_id or None,
            message_ids=list(answer.telegram_message_ids),
            patience=max(give_up_at - time.monotonic(), 0.0),
        )
        if answer.heard:
            stream.head(texts.heard(answer.heard))
        try:
            await stream.finish(answer.text, texts.INTERRUPTED if cut else texts.footer(answer.status, answer.text))
        except Postponed as error:
            log.info("answer %s in chat %s waits for a later start: %s", answer.message_id, answer.chat_id, error)
            continue
        except (Undeliverable, TelegramError) as error:  # blocked, chat gone, too old: nothing left to repair
            log.info("could not finish interrupted answer %s in chat %s: %s", answer.message_id, answer.chat_id, error)
        await history.settle(answer.message_id)
