"""A question put to the model and its answer given: the conversation claimed (before anything is downloaded
for the question), the model's view of it read, the engine asked (which refuses at once when its line is
full), the exchange stored, and the answer streamed.  Nothing is written to the history for a question that
was refused.
"""

from __future__ import annotations

import functools
import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from telegram import Message

from bot import texts
from bot.admission.answers_in_progress import AnswerInProgress, Waits
from bot.answers.answer_stream import AnswerStream, StoredExchange
from bot.answers.asking import Asking
from bot.answers.context_view import model_view
from bot.answers.read_ahead import prepare_soon
from bot.history import ConversationKey
from bot.output.chat import is_private, tell, unbutton
from bot.services import Services
from engine.backend import Backend
from engine.engine import Event
from engine.fair_queue import AlreadyQueued, QueueFull

log = logging.getLogger(__name__)


@asynccontextmanager
async def conversation_turn(
    services: Services, message: Message, asker: int, key: ConversationKey, *, keeping: bool = False
) -> AsyncIterator[AnswerInProgress | None]:
    """The conversation claimed for a question of ``asker`` (sent as ``message``) before anything is downloaded
    or read for it, or None once the person was told why not.  In a group, someone asking while another
    member's answer is written waits for the conversation and is told their place.  Released at the end of
    the block (or earlier, once the model is done: bot/answers/answer_stream.py); the model then reads the
    conversation ahead of its next question, if it answered this one.  ``keeping``: a photo kept for the question
    to come, which waits for the asker's own answer too."""
    engine = services.engine
    if engine is None:
        await services.refusals.note(message, texts.NO_MODEL)
        yield None
        return
    if services.stopping.is_set():  # a question that got this far during shutdown starts nothing
        await services.refusals.note(message, texts.RESTARTING)
        yield None
        return
    private = is_private(message)
    waits: Waits = "always" if keeping else "never" if private else "behind_others"
    waiting = None if private else functools.partial(_waiting, message)
    async with services.answers.claim(key, asker, engine.cancel, waits=waits, waiting=waiting) as claim:
        if isinstance(claim, str):
            if claim != "withdrawn":  # a withdrawn question's /stop was answered already
                await services.refusals.note(message, texts.NOT_CLAIMED[claim])
            yield None
            return
        yield claim
    if claim.answered:
        prepare_soon(services, key)


async def _waiting(message: Message, place: int) -> None:
    await tell(message, texts.waiting_here(place), pace="now_or_never")


async def answer(services: Services, asking: Asking, claimed: AnswerInProgress) -> None:
    """Put the question to the engine and stream its answer in reply to its message."""
    engine = services.engine
    if services.stopping.is_set() or engine is None:  # shutting down (or the model went) while it waited
        await services.refusals.note(asking.message, texts.RESTARTING)
        return
    try:
        claimed.answered = await _answer(services, engine, asking, claimed)
    except sqlite3.Error as error:  # a full disk, a read-only volume: the model's slot is free already
        await storage_failed(services, asking.message, error)


async def storage_failed(services: Services, message: Message, error: sqlite3.Error) -> None:
    log.error("the history database failed in chat %s: %s", message.chat_id, error)
    await services.refusals.note(message, texts.NOT_STORED)


async def _answer(services: Services, engine: Backend, asking: Asking, claimed: AnswerInProgress) -> bool:
    """Whether the model answered (or began to): a full line or a retry overtaken by another ends it first."""
    retried = asking.retried
    view = await model_view(services, engine, asking.key, before=retried.question.id if retried else None)
    seed = secrets.randbelow(2**31) if retried else None
    events = engine.ask(
        asking.key,
        view.turns,
        asking.question,
        system_prompt=view.system_prompt,
        seed=seed,
        asker=asking.asker,
        speech=asking.speech,
    )
    try:
        if claimed.stopped:  # stopped while its view was read: never asked (no await from here to the line)
            return False
        try:
            first = await anext(events)
        except AlreadyQueued:  # the engine still answers this conversation under its new id (a group upgrade)
            await services.refusals.note(asking.message, texts.STILL_ANSWERING)
            return False
        except QueueFull:
            await services.refusals.note(asking.message, texts.BUSY)
            return False
        stored = await _store(services, asking)
        if stored is None:
            return False
        exchange, reply_to = stored
        claimed.answer_id = exchange.answer_id
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
            user_id=asking.asker,
        )
        return StoredExchange(question_id, answer_id), message.message_id
    answer_id = await history.replace_answer(retried)
    if answer_id is None:
        await services.refusals.note(message, texts.ONLY_LATEST)
        return None
    if retried.answer.telegram_message_ids:  # the answer it replaces stays in the chat, without its button
        await unbutton(message.get_bot(), message.chat_id, retried.answer.telegram_message_ids[-1])
    # in reply to the question, or else (a Describe button's question is no message) to the old answer
    replied = retried.question.telegram_message_ids or retried.answer.telegram_message_ids
    return StoredExchange(retried.question.id, answer_id), replied[0] if replied else None


async def _resumed(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """The engine's events, the first of them already taken to see whether the line had room."""
    yield first
    async for event in rest:
        yield event
