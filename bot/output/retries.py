"""What becomes of a text Telegram does not take at once: flood control and transport trouble pass, a blocked bot
does not.

An answer's final text is retried with tenacity until it is delivered, clearly undeliverable (``Undeliverable``:
blocked, chat gone), or left for the next start (``Postponed``: the bot is shutting down, or the answer's patience
ran out), honouring Telegram's ``retry_after`` exactly.  Flood control (429) is Telegram's ordinary flow control,
not an error: the first 429 of a storm is logged as a warning, the rest of the storm at debug level.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

log = logging.getLogger(__name__)

STORM_GAP_SECONDS = 60.0  # flood control quiet this long: the next 429 starts a new storm

T = TypeVar("T")


class Undeliverable(Exception):
    """The chat cannot receive messages any more (bot blocked or removed, chat deleted)."""


class Postponed(Exception):
    """The final text could not be shown in time (the bot is shutting down, or flood control outlasted the
    stream's patience); it is recorded, and recovery shows it at the next start."""


def _seconds(retry_after: object) -> float:
    """PTB gives retry_after as int seconds or, with PTB_TIMEDELTA, as a timedelta."""
    return retry_after.total_seconds() if isinstance(retry_after, timedelta) else float(retry_after)  # type: ignore[arg-type]


def _temporary(error: BaseException) -> bool:
    """Flood control and transport trouble pass; a Bad Request (a subclass of NetworkError in PTB) does not."""
    return isinstance(error, RetryAfter) or (isinstance(error, NetworkError) and not isinstance(error, BadRequest))


def _wait_for(state: RetryCallState) -> float:
    """tenacity wait: honour Telegram's retry_after exactly, back off exponentially otherwise."""
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    if isinstance(error, RetryAfter):
        return _seconds(error.retry_after) + 0.1
    return wait_exponential(multiplier=0.5, max=10)(state)


class _FloodLog:
    """One warning per storm of 429s, whichever chats and answers meet it."""

    def __init__(self) -> None:
        self._last = -math.inf

    def note(self, chat_id: int, retry_after: float) -> None:
        now = time.monotonic()
        starts = now - self._last > STORM_GAP_SECONDS
        self._last = now
        if starts:
            log.warning(
                "Telegram's flood control (429) in chat %s: retry after %.0f s; the bot waits, and further 429s "
                "are logged at debug level until %.0f s pass without one",
                chat_id,
                retry_after,
                STORM_GAP_SECONDS,
            )
        else:
            log.debug("flood control in chat %s: retry after %.0f s", chat_id, retry_after)


_floods = _FloodLog()


def flood_seconds(chat_id: int, error: RetryAfter) -> float:
    """How long Telegram asks the chat to wait, noted in the storm's log."""
    seconds = _seconds(error.retry_after)
    _floods.note(chat_id, seconds)
    return seconds


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep, but not past the start of a shutdown."""
    if seconds > 0 and not stopping.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)


async def deliver(call: Callable[[], Awaitable[T]], *, chat_id: int, stopping: asyncio.Event, patience: float) -> T:
    """Retry until delivered: flood control and network trouble are temporary, a blocked bot is not. Once
    ``stopping`` is set, or after ``patience`` seconds, nothing more is waited for."""
    give_up_at = time.monotonic() + patience

    def stop(state: RetryCallState) -> bool:
        return stopping.is_set() or time.monotonic() + state.upcoming_sleep > give_up_at

    def note_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, RetryAfter):
            flood_seconds(chat_id, error)

    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_temporary),
            wait=_wait_for,
            stop=stop,
            sleep=functools.partial(pause, stopping),
            before_sleep=note_retry,
            reraise=True,
        ):
            with attempt:
                return await call()
    except Forbidden as error:
        raise Undeliverable(str(error)) from error
    except TelegramError as error:
        if _temporary(error):
            raise Postponed(str(error)) from error
        raise
    raise AssertionError("unreachable")
