"""A question put to the model and its answer given: the conversation claimed, the model's view of it read, the
engine asked (which refuses at once when its line is full), the exchange stored, and the answer streamed.
Nothing is written to the history for a question that was refused.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator

from telegram import Message
from telegram.error import TelegramError

from bot import texts
from bot.answer_stream import AnswerStream, StoredExchange
from bot.answers_in_progress import AnswerInProgress
from bot.asking import Asking
from bot.chat import reply
from bot.history import Exchange
from bot.services import Services
from engine.engine import Engine, Event
from engine.fair_queue import AlreadyQueued, QueueFull

log = logging.getLogger(__name__)


async def ask(services: Services, asking: Asking) -> None:
    """Put the question to the engine and stream its answer in reply to its message."""
    try:
        await _put(services, asking)
    except sqlite3.Error as error:  # a full disk, a read-only volume: the model's slot is free already
        await storage_failed(asking.message, error)


async def storage_failed(message: Message, error: sqlite3.Error) -> None:
    log.error("the history database failed in chat %s: %s", message.chat_id, error)
    await reply(message, texts.NOT_STORED)


async def _put(services: Services, asking: Asking) -> None:
    if services.stopping.is_set():  # a question that got this far during shutdown starts nothing
        await reply(asking.message, texts.RESTARTING)
        return
    engine = services.engine
    assert engine is not None
    with services.answers.claim(asking.key, asking.user_id, engine.cancel) as claimed:
        if claimed is None:
            await reply(asking.message, texts.STILL_ANSWERING)
            return
        answered = await _answer(services, engine, asking, claimed)
    if answered:
        services.prepare_soon(asking.key)  # the answer is read into the model's view before the next question


async def _answer(services: Services, engine: Engine, asking: Asking, claimed: AnswerInProgress) -> bool:
    """Whether the model answered (or began to): a full line or a retry overtaken by another ends it first."""
    retried = asking.retried
    view = await services.view(engine, asking.key, before=retried.question.id if retried else None)
    seed = secrets.randbelow(2**31) if retried else None
    events = engine.ask(asking.key, view.turns, asking.question, system_prompt=view.system_prompt, seed=seed)
    try:
        try:
            first = await anext(events)
        except AlreadyQueued:  # the engine still answers this conversation under its new id (a group upgrade)
            await reply(asking.message, texts.STILL_ANSWERING)
            return False
        except QueueFull:
            await reply(asking.message, texts.BUSY)
            return False
        stored = await _store(services, asking)
        if stored is None:
            return False
        exchange, reply_to = stored
        await AnswerStream(services, asking, exchange, reply_to).show(_resumed(first, events), claimed)
        return True
    finally:
        await events.aclose()  # whatever happened, the model's slot is free at once


async def _store(services: Services, asking: Asking) -> tuple[StoredExchange, int | None] | None:
    """The exchange written before anything is shown, and the message the answer replies to; None when
    another retry replaced the answer meanwhile."""
    history, message, retried = services.history, asking.message, asking.retried
    if retried is None:
        question_id, answer_id = await history.start_exchange(
            asking.key,
            asking.question.text,
            images=asking.material.images,
            telegram_message_id=asking.telegram_message_id,
            user_id=asking.user_id,
        )
        return StoredExchange(question_id, answer_id), message.message_id
    answer_id = await history.replace_answer(retried)
    if answer_id is None:
        await reply(message, texts.ONLY_LATEST)
        return None
    await _unbutton(message, retried)
    # in reply to the question, or else (a Describe button's question is no message) to the old answer
    replied = retried.question.telegram_message_ids or retried.answer.telegram_message_ids
    return StoredExchange(retried.question.id, answer_id), replied[0] if replied else None


async def _unbutton(message: Message, exchange: Exchange) -> None:
    """Best effort: the answer a retry replaces stays in the chat, without its button."""
    if not exchange.answer.telegram_message_ids:
        return
    try:
        await message.get_bot().edit_message_reply_markup(
            message.chat_id, exchange.answer.telegram_message_ids[-1], reply_markup=None
        )
    except TelegramError as error:
        log.info("could not remove the Retry button in chat %s: %s", message.chat_id, error)


async def _resumed(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """The engine's events, the first of them already taken to see whether the line had room."""
    yield first
    async for event in rest:
        yield event
