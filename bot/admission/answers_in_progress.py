"""The answers the bot is giving now: the one record of who is being answered, in which conversation, under
which key the engine runs it, and who may stop it.

A question claims its conversation before anything is downloaded or read for it and keeps the claim until the
model is done with its answer (its final text may still be on its way to Telegram then), so two questions of
one conversation never meet in the model's line, one person never has two files read at once in a chat, and
/stop, the Stop button, /reset, /retry and the read-ahead after an answer all ask here.  In a group, a member
who asks while someone else's answer is being written waits for the conversation (told their place), up to
``WAITING_PER_CONVERSATION`` people; someone whose own question is being answered is told so instead.
Telegram may give a conversation a new chat id while its answer runs (a group upgraded to a supergroup): the
engine goes on under the key it was asked with, and the new key is pointed at the same answer, so the rules
follow the conversation to its new id.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeVar

from bot.history import ConversationKey

T = TypeVar("T")
WAITING_PER_CONVERSATION = 3  # group members waiting for one conversation; more are told the bot is busy
WAITING_IN_ALL = 16  # in all conversations: each holds one of python-telegram-bot's update slots while it waits
NotClaimed = Literal["own", "full", "withdrawn"]  # the asker's own question runs; the line is full; /stop
# Whether a claim may wait for a busy conversation: never (a question in a private chat: "still answering"),
# behind other people's answers (a question in a group), or behind any (a photo kept for the question to come).
Waits = Literal["never", "behind_others", "always"]


class Cancel(Protocol):
    """The engine's: stops the conversation's answer or takes it out of the line; ``grace``: how long its
    process may take to confirm (engine/engine.py)."""

    def __call__(self, conversation: ConversationKey, *, grace: float | None = None) -> bool: ...


@dataclass
class AnswerInProgress:
    runs_under: ConversationKey  # the key the engine was asked with; a group upgrade does not change it
    asker: int | None  # who asked (access.py's Sender.id); None when Telegram did not say (only admins stop it)
    cancel: Cancel
    answer_id: int | None = None  # the answer's row in the history once stored: its Stop button names it
    answered: bool = False  # the model answered (or began to): the conversation is read ahead for the next one
    stopped: bool = False  # stopped before the engine had it (its files being read): it is not asked
    held: bool = True  # the conversation is this answer's; released once the model is done with it
    _release: Callable[[AnswerInProgress], None] | None = None  # the record's, set when it hands out the claim
    _reading: asyncio.Task[Any] | None = None

    def stop(self, grace: float | None = None) -> bool:
        """Within a token once the engine has the question; before that, its files stop being read and it is
        never asked.  Only while the claim is held: once released, the conversation's next answer may run under
        the same key, and it is not this one's to stop.  True: there was something to stop."""
        if not self.held:
            return False
        self.stopped = True
        if self._reading is not None:
            self._reading.cancel()
        self.cancel(self.runs_under, grace=grace)
        return True

    def release(self) -> None:
        """The model is done with this answer: the conversation's next asker may have it while this answer's
        final text is still on its way to Telegram (safe to call more than once; the claim's block ends with it)."""
        if self.held and self._release is not None:
            self._release(self)

    async def read(self, work: Awaitable[T]) -> T | None:
        """``work`` (downloading and reading the question's files), or None once the answer was stopped
        meanwhile, which ends the reading at once."""
        if self.stopped:
            return None
        self._reading = asyncio.ensure_future(work)
        try:
            await asyncio.wait({self._reading})
        finally:
            if not self._reading.done():  # the caller itself was cancelled
                self._reading.cancel()
        reading, self._reading = self._reading, None
        return None if reading.cancelled() else reading.result()


@dataclass
class _Waiter:
    asker: int | None
    turn: asyncio.Future[AnswerInProgress | None]


class AnswersInProgress:
    def __init__(self) -> None:
        self._by_key: dict[ConversationKey, AnswerInProgress] = {}
        self._waiting: dict[ConversationKey, deque[_Waiter]] = {}

    def busy(self, key: ConversationKey) -> bool:
        return key in self._by_key

    def asker(self, key: ConversationKey) -> int | None:
        """Who the conversation's answer in progress is for (None: none, or Telegram did not say)."""
        answer = self._by_key.get(key)
        return None if answer is None else answer.asker

    def answer_id(self, key: ConversationKey) -> int | None:
        """The stored answer the conversation's answer in progress writes into, once it is stored."""
        answer = self._by_key.get(key)
        return None if answer is None else answer.answer_id

    @asynccontextmanager
    async def claim(
        self,
        key: ConversationKey,
        asker: int | None,
        cancel: Cancel,
        *,
        waits: Waits = "never",
        waiting: Callable[[int], Awaitable[None]] | None = None,
    ) -> AsyncIterator[AnswerInProgress | NotClaimed]:
        """The conversation's answer for the length of the block, or why not.  ``waiting``: called with the
        asker's place when they have to wait."""
        claimed = self._take(key, asker, cancel) if not self._waiting.get(key) else None
        if claimed is None:
            refusal = self._refusal(key, asker, waits)
            if refusal is not None:
                yield refusal
                return
            claimed = await self._wait(key, asker, waiting)
            if claimed is None:
                yield "withdrawn"
                return
            claimed.cancel = cancel
        try:
            yield claimed
        finally:
            claimed.release()

    def _take(self, key: ConversationKey, asker: int | None, cancel: Cancel) -> AnswerInProgress | None:
        if key in self._by_key:
            return None
        answer = AnswerInProgress(key, asker, cancel, _release=self._release)
        self._by_key[key] = answer
        return answer

    def _refusal(self, key: ConversationKey, asker: int | None, waits: Waits) -> NotClaimed | None:
        current = self._by_key.get(key)
        line = self._waiting.get(key, deque())
        own = current is not None and current.asker == asker
        if waits == "never" or (own and waits != "always") or any(waiter.asker == asker for waiter in line):
            return "own"
        if len(line) >= WAITING_PER_CONVERSATION or sum(map(len, self._waiting.values())) >= WAITING_IN_ALL:
            return "full"
        return None

    async def _wait(
        self, key: ConversationKey, asker: int | None, waiting: Callable[[int], Awaitable[None]] | None
    ) -> AnswerInProgress | None:
        waiter = _Waiter(asker, asyncio.get_running_loop().create_future())
        line = self._waiting.setdefault(key, deque())
        line.append(waiter)
        try:
            if waiting is not None:
                await waiting(len(line) + (1 if key in self._by_key else 0))
            return await waiter.turn
        except BaseException:
            if waiter.turn.done() and not waiter.turn.cancelled() and waiter.turn.result() is not None:
                waiter.turn.result().release()  # granted in the same moment: handed on, not lost
            self._leave(key, waiter)
            raise

    def _leave(self, key: ConversationKey, waiter: _Waiter) -> None:
        line = self._waiting.get(key)
        if line is not None and waiter in line:
            line.remove(waiter)
        if line is not None and not line:
            del self._waiting[key]

    def _release(self, answer: AnswerInProgress) -> None:
        """The model is done with the answer; the conversation's next asker in line gets it."""
        answer.held = False
        for named in [named for named, held in self._by_key.items() if held is answer]:
            del self._by_key[named]
            line = self._waiting.get(named)
            while line:
                waiter = line.popleft()
                if not waiter.turn.done():
                    following = AnswerInProgress(named, waiter.asker, answer.cancel, _release=self._release)
                    self._by_key[named] = following
                    waiter.turn.set_result(following)
                    break
            if line is not None and not line:
                del self._waiting[named]

    def withdraw(self, key: ConversationKey, asker: int | None) -> bool:
        """An asker still waiting for the conversation gives up their place (/stop); True if they were waiting."""
        for waiter in self._waiting.get(key, ()):
            if waiter.asker == asker and not waiter.turn.done():
                waiter.turn.set_result(None)
                self._leave(key, waiter)
                return True
        return False

    def may_stop(self, key: ConversationKey, user_id: int | None, admin: bool) -> bool:
        """The person who asked and the bot's admins may stop an answer; with none running, anyone may try."""
        answer = self._by_key.get(key)
        return answer is None or admin or (user_id is not None and user_id == answer.asker)

    def stop(self, key: ConversationKey, answer_id: int | None = None) -> bool:
        """Stop the conversation's answer within a token (only the one stored as ``answer_id``, if given); True
        if there was one."""
        answer = self._by_key.get(key)
        if answer is None or (answer_id is not None and answer.answer_id != answer_id):
            return False
        return answer.stop()

    def stop_all(self, grace: float | None = None) -> int:
        """Shutdown: every answer being given stops through its claim, as /stop would stop it; ``grace``: how long
        the model's process may take to confirm.  Returns how many there were."""
        held = {id(answer): answer for answer in self._by_key.values()}.values()  # a moved chat's answer once
        return sum(answer.stop(grace) for answer in list(held))

    def move_chat(self, old: int, new: int) -> int:
        """A chat got a new id (a group became a supergroup): its answers running now are found under the new
        id too, until they end.  Returns how many moved."""
        moving = [(key, answer) for key, answer in self._by_key.items() if key.chat_id == old]
        for key, answer in moving:
            self._by_key.setdefault(replace(key, chat_id=new), answer)  # one running there already stays
        return len(moving)
