"""A fair line for one model shared by many conversations.

Each conversation may have one request in the system (waiting or running): a conversation where a second
question silently queues behind the first is confusing, so the caller is told (``AlreadyQueued``) and can
offer /stop instead.  Conversations are served first come, first served, but fairly per person: a request
names who asks (``owner``), and someone with requests in line already (asking in several conversations at
once) goes behind everyone's first request, then behind everyone's second, and so on, so nobody holds more
than one place ahead of others by spreading questions.  The line is bounded so a flood gets a clear "busy"
(``QueueFull``) instead of an hour-long wait.  Positions are observable so the bot can
show "you are #3 in line" and update it as the line moves.  Each ticket carries its owner's ``job`` (the
engine's state of one answer), so the line is the one place that says what runs and waits, for whom.

A request that finds the model idle runs alone, the way a follow-up is fastest (GenAI's chat state keeps
its encoded photos).  When several are waiting as a slot frees, up to ``batch_max`` of them run together as
a batch, which answers them all sooner in total (benchmarks/batching.py), and newcomers join that batch
until it has drained.  ``Ticket.batched`` tells the engine which way a request was let in.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Generic, Literal, TypeVar

from cachetools import LRUCache

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
J = TypeVar("J")
State = Literal["waiting", "running", "done", "cancelled"]
OWNERS_REMEMBERED = 10_000  # people whose last round is remembered; one forgotten starts at the current round


class AlreadyQueued(Exception):
    """This conversation already has a request waiting or running."""


class QueueFull(Exception):
    """Too many requests are waiting; try again later."""


class TicketCancelled(Exception):
    """The ticket was cancelled before its turn came."""


class Ticket(Generic[K, J]):
    """A place in line; ``async with ticket:`` waits for the turn and always gives the slot back."""

    def __init__(self, queue: FairQueue[K, J], key: K, job: J, owner: Hashable | None = None, turn: int = 0) -> None:
        self.key = key
        self.job = job
        self.owner = owner
        self.turn = turn  # its round: one more than its owner's previous request in line, none before the line's
        self.state: State = "waiting"
        self.batched = False
        self._queue = queue
        self._granted = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def position(self) -> int | None:
        return self._queue.position_of(self)

    def notify(self) -> None:
        self._changed.set()

    async def changes(self) -> AsyncIterator[int]:
        """The position at first and after each change in the line (a move, or a newcomer behind: it may be
        answered together with this one), until the turn comes (0) or the ticket leaves the line."""
        while True:
            self._changed.clear()
            position = self.position
            if position is None:
                return
            yield position
            if position == 0:
                return
            await self._changed.wait()

    async def __aenter__(self) -> Ticket[K, J]:
        try:
            await self._granted.wait()
        except asyncio.CancelledError:
            self._queue.release(self)
            raise
        if self.state != "running":
            raise TicketCancelled(f"request for {self.key!r} was cancelled")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._queue.release(self)


class FairQueue(Generic[K, J]):
    def __init__(self, max_waiting: int = 20, batch_max: int = 1) -> None:
        self.max_waiting = max_waiting
        self.batch_max = batch_max
        self._waiting: deque[Ticket[K, J]] = deque()
        self._running: list[Ticket[K, J]] = []
        self._by_key: dict[K, Ticket[K, J]] = {}
        self._batching = False
        self._held = False
        self._drained = asyncio.Event()
        self._turn = 0  # the round of the request let in last: a newcomer never goes ahead of it
        # the round each owner was last let in at, so one who comes back goes to the next round, not the current
        # one again (which would let two people taking turns keep a third's second request waiting for ever)
        self._served_turns: LRUCache[Hashable, int] = LRUCache(OWNERS_REMEMBERED)
        self.served = 0

    def __len__(self) -> int:
        return len(self._waiting) + len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def in_line(self) -> list[Ticket[K, J]]:
        """Service order: running first, then waiting."""
        return [*self._running, *self._waiting]

    def job(self, key: K) -> J | None:
        """The job of the request waiting or running for ``key``, if any."""
        ticket = self._by_key.get(key)
        return None if ticket is None else ticket.job

    def enqueue(self, key: K, job: J, owner: Hashable | None = None) -> Ticket[K, J]:
        """``owner``: who asks (None: nobody in particular); a second request of one owner waits behind every
        owner's first."""
        if key in self._by_key:
            raise AlreadyQueued(f"{key!r} already has a request in the queue")
        if len(self._waiting) >= self.max_waiting and len(self._running) >= self._limit:
            raise QueueFull(f"{len(self._waiting)} requests are already waiting")
        turn = self._turn
        if owner is not None:
            earlier = [ticket.turn for ticket in self.in_line() if ticket.owner == owner]
            last = max(earlier, default=self._served_turns.get(owner))
            turn = max(turn, last + 1) if last is not None else turn
        ticket = Ticket(self, key, job, owner, turn)
        self._by_key[key] = ticket
        behind = next((index for index, other in enumerate(self._waiting) if other.turn > turn), len(self._waiting))
        self._waiting.insert(behind, ticket)
        self._grant()
        self._notify_waiting()  # a newcomer changes how long those ahead of it wait, when batched with them
        return ticket

    def position(self, key: K) -> int | None:
        ticket = self._by_key.get(key)
        return None if ticket is None else self.position_of(ticket)

    def position_of(self, ticket: Ticket[K, J]) -> int | None:
        if ticket.state == "running":
            return 0
        if ticket.state != "waiting":
            return None
        return self._waiting.index(ticket) + 1

    def cancel(self, key: K) -> bool:
        """Withdraw a waiting request; a running one is stopped by its owner, not here."""
        ticket = self._by_key.get(key)
        return ticket is not None and self.withdraw(ticket)

    def withdraw(self, ticket: Ticket[K, J]) -> bool:
        if ticket.state != "waiting":
            return False
        self._waiting.remove(ticket)
        self._finish(ticket, "cancelled")
        ticket._granted.set()  # wake the owner, who then sees the cancellation
        self._notify_waiting()
        return True

    def release(self, ticket: Ticket[K, J]) -> None:
        """Give back the slot (or the place in line); safe to call more than once."""
        if ticket.state == "waiting":
            self.withdraw(ticket)
            return
        if ticket.state == "running":
            self._running.remove(ticket)
            self.served += 1
            self._finish(ticket, "done")
            if not self._running:
                self._drained.set()
            self._grant()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Nobody is let in while held, and the body starts once every running request has finished: the
        model can be switched between requests."""
        self._held = True
        try:
            while self._running:
                self._drained.clear()
                await self._drained.wait()
            yield
        finally:
            self._held = False
            self._grant()

    @property
    def _limit(self) -> int:
        return self.batch_max if self._batching else 1

    def _finish(self, ticket: Ticket[K, J], state: State) -> None:
        ticket.state = state
        if self._by_key.get(ticket.key) is ticket:
            del self._by_key[ticket.key]
        ticket.notify()

    def _grant(self) -> None:
        if self._held:
            return
        if not self._running:
            self._batching = self.batch_max > 1 and len(self._waiting) > 1
        moved = False
        while self._waiting and len(self._running) < self._limit:
            ticket = self._waiting.popleft()
            self._turn = max(self._turn, ticket.turn)
            if ticket.owner is not None:
                self._served_turns[ticket.owner] = ticket.turn
            ticket.state = "running"
            ticket.batched = self._batching
            self._running.append(ticket)
            ticket._granted.set()
            ticket.notify()
            moved = True
        if moved:
            self._notify_waiting()

    def _notify_waiting(self) -> None:
        for ticket in self._waiting:
            ticket.notify()
