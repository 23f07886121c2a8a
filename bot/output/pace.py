"""How the bot spends Telegram's rate limits: every request says whether it may wait for its turn.

Telegram lets a bot send about 30 messages a second in all and about 20 a minute into one group; past that it
answers 429.  python-telegram-bot's AIORateLimiter makes every request wait for its turn, which is right for an
answer's final text but lets anything cheap to send hold the bot: refusals to strangers queue in one group's
budget, each holding one of the update slots while it waits, and a busy group's typing indicators, streaming
edits and ``getChatMember`` calls make ``/stop`` wait behind them.  So each request states its pace
(python-telegram-bot's ``rate_limit_args``):

* ``"wait"`` (the default): waits for its turn, as the final text of an answer must;
* ``"now_or_never"``: sent only if the budget allows it now, else ``Skipped`` at once; for refusals, typing
  indicators, drafts and streaming edits, which are worth nothing later (the next edit carries the text);
* ``"first"``: does not queue behind the chat's budget, for an acknowledgement a person is waiting for (Stop);
  a small part of each group's budget is kept for it, which nothing else may use.

Only what puts messages into a chat spends a group's budget; reading a member's status or leaving a chat does
not.  At shutdown every waiting request gives up at once (``Skipped``): the streaming code records what it could
not show, and the next start shows it, so a full queue never holds up an exit.  The buckets are aiolimiter's
leaky buckets, as in python-telegram-bot's own limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from aiolimiter import AsyncLimiter
from cachetools import LRUCache
from telegram.error import NetworkError
from telegram.ext import BaseRateLimiter

Pace = Literal["wait", "now_or_never", "first"]

MESSAGES_PER_SECOND = 30  # the whole bot
GROUP_MESSAGES_PER_MINUTE = 20  # one group or channel
# Of a group's budget, kept for what goes first (Stop's acknowledgement): everything else shares the rest.
GROUP_RESERVE_PER_MINUTE = 2
GROUPS_TRACKED = 4096  # group buckets kept; a bucket dropped for room is full again, which errs on the safe side
# Calls that name a chat but put nothing into it.
UNCOUNTED = frozenset({"getChat", "getChatMember", "getChatAdministrators", "getChatMemberCount", "leaveChat"})
# Shown while the model works and refreshed by the next one: never worth a place in a group's queue.
CHEAP = frozenset({"sendChatAction"})

Result = bool | dict[str, Any] | list[dict[str, Any]]


class Skipped(NetworkError):
    """Not sent: the request would have had to wait for Telegram's rate limit (or for a shutdown), and it was one
    that is worth sending only now.  A NetworkError, so code that retries transport trouble retries it, and code
    that gives up on a best-effort call gives up on it."""


@dataclass(frozen=True)
class _Group:
    """A group's budget: the whole of it, and the part all but what goes first may use."""

    whole: AsyncLimiter = field(default_factory=lambda: AsyncLimiter(GROUP_MESSAGES_PER_MINUTE, 60))
    shared: AsyncLimiter = field(
        default_factory=lambda: AsyncLimiter(GROUP_MESSAGES_PER_MINUTE - GROUP_RESERVE_PER_MINUTE, 60)
    )


class Pacer(BaseRateLimiter[Pace]):
    def __init__(self) -> None:
        self._overall = AsyncLimiter(MESSAGES_PER_SECOND, 1)
        self._groups: LRUCache[int | str, _Group] = LRUCache(GROUPS_TRACKED)
        self._stopping = asyncio.Event()
        self.skipped = 0  # requests not sent for want of budget, since the start (``/stats``)

    async def initialize(self) -> None:
        """Nothing to set up: buckets are made as chats appear."""

    async def shutdown(self) -> None:
        self.stop()

    def stop(self) -> None:
        """From now on nothing waits: requests in the queue and new ones that would queue are Skipped."""
        self._stopping.set()

    def _buckets(self, endpoint: str, chat_id: object, pace: Pace) -> list[AsyncLimiter]:
        if chat_id is None:
            return []
        buckets = [self._overall]
        group = _group(chat_id)
        if group is not None and endpoint not in UNCOUNTED:
            budget = self._groups.get(group)
            if budget is None:
                budget = self._groups[group] = _Group()
            buckets += [budget.whole] if pace == "first" else [budget.whole, budget.shared]
        return buckets

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, Result]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: Pace | None,
    ) -> Result:
        pace = rate_limit_args or "wait"
        buckets = self._buckets(endpoint, data.get("chat_id"), pace)
        if endpoint in CHEAP:  # sent only while the chat's budget has room, and without spending it
            if not all(bucket.has_capacity() for bucket in buckets):
                self._skip(endpoint)
            return await callback(*args, **kwargs)
        if pace == "now_or_never" or (pace == "wait" and self._stopping.is_set()):
            if not all(bucket.has_capacity() for bucket in buckets):
                self._skip(endpoint)
            for bucket in buckets:
                await bucket.acquire()  # returns at once: the capacity was just confirmed
        elif pace == "first":  # the group's reserve is there for it; spent all the same if it is not
            for bucket in buckets:
                if bucket.has_capacity():
                    await bucket.acquire()
        else:
            for bucket in buckets:
                await self._acquire(bucket, endpoint)
        return await callback(*args, **kwargs)

    async def _acquire(self, bucket: AsyncLimiter, endpoint: str) -> None:
        """Waits for the bucket, unless the bot starts shutting down meanwhile."""
        if bucket.has_capacity():
            await bucket.acquire()
            return
        acquiring = asyncio.ensure_future(bucket.acquire())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not acquiring.done():
                acquiring.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acquiring
        if acquiring.cancelled():
            self._skip(endpoint)

    def _skip(self, endpoint: str) -> NoReturn:
        self.skipped += 1
        raise Skipped(f"{endpoint} not sent: Telegram's rate limit for this chat is spent")


def _group(chat_id: object) -> int | str | None:
    """The group or channel a chat id names (negative ids, or an @username), None for a private chat."""
    with contextlib.suppress(TypeError, ValueError):
        number = int(chat_id)  # type: ignore[call-overload]
        return number if number < 0 else None
    text = str(chat_id)
    return text if text.startswith("@") else None
