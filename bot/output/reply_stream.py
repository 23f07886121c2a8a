"""One streamed answer in a chat: a placeholder, throttled edits as text arrives, then the final formatting.

In a private chat the answer streams as a draft instead (``sendMessageDraft``, Telegram's own streaming: it
animates the growing text and costs no edits) and the final text is sent as new messages.  A draft lasts about
30 s unless refreshed and vanishes when the bot sends a message; a draft Telegram refuses (a 400, or an older
self-hosted Bot API server that does not know the method) turns that answer into edits, with nothing lost.

Rules it keeps:
* at most one edit per ``interval`` (Telegram throttles chats that edit faster; groups get a longer interval),
  one draft per ``Drafts.interval``, and neither when the visible text did not change;
* plain text while streaming (a half-written Markdown answer would not parse), entities at the end;
* past Telegram's 4096-unit limit the answer continues in a new message, replying to the previous part;
* nothing is shown that is not recorded first: ``record`` gets the answer's text and every message id before
  an edit or a send shows them, and again as soon as a send gives a new part its id, so that recovery after a
  crash can repair every part (bot/output/recovery.py);
* flood control (429) and network errors never lose text: streaming edits are postponed, the final text is
  retried with tenacity until it is delivered, clearly undeliverable (blocked, chat gone), or left for the
  next start (``Postponed``: the bot is shutting down, or ``patience`` ran out); flood control is expected flow
  control, logged once per storm;
* a part the user deletes is sent anew, and so is every part after it (the bot deletes its old copies): a chat
  orders messages by when they were sent, so this is the only way the answer still reads in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from telegram import Bot, InlineKeyboardMarkup, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import BadRequest, ChatMigrated, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from bot.output.chat import unbutton
from bot.output.formatting import TELEGRAM_TEXT_LIMIT, FormattedPart, formatted_parts, plain_parts
from bot.output.pace import Skipped

log = logging.getLogger(__name__)

CURSOR = " ▌"
FINAL_DELIVERY_SECONDS = 300.0
STORM_GAP_SECONDS = 60.0  # flood control quiet this long: the next 429 starts a new storm
MOVES = 3  # a chat that moves more often than this while one answer is shown is given up
DELETED = "\0deleted"  # stands in the shown text of a message that can no longer be edited
DRAFT_REFRESH_SECONDS = 20.0  # a draft unchanged this long is sent again: Telegram drops it after about 30 s

T = TypeVar("T")
Record = Callable[[str, Sequence[int]], Awaitable[None]]


class Undeliverable(Exception):
    """The chat cannot receive messages any more (bot blocked or removed, chat deleted)."""


class Postponed(Exception):
    """The final text could not be shown in time (the bot is shutting down, or flood control outlasted the
    stream's patience); it is recorded, and recovery shows it at the next start."""


class _Moved(Exception):
    """The chat moved (a group became a supergroup) while a part was being shown: every part is to be sent to
    the new chat anew, from the first."""


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


def _not_modified(error: BadRequest) -> bool:
    return "not modified" in error.message.lower()


def _message_gone(error: BadRequest) -> bool:
    text = error.message.lower()
    return "message to edit not found" in text or "message can't be edited" in text


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


def _final_parts(text: str, footer: str) -> list[FormattedPart]:
    """The formatted answer with its footer; the footer alone (or "…") when there are no words."""
    if not text.strip():
        return [FormattedPart(footer.strip() or "…")]
    parts = formatted_parts(text)
    if footer:
        parts = [*parts[:-1], FormattedPart(parts[-1].text + footer, parts[-1].entities)]
        if len(parts[-1].text) > TELEGRAM_TEXT_LIMIT:
            parts = [
                *parts[:-1],
                FormattedPart(parts[-1].text[: -len(footer)], parts[-1].entities),
                FormattedPart(footer.strip()),
            ]
    return parts


class _FloodLog:
    """Flood control (429) is Telegram's ordinary flow control, not an error: the first 429 of a storm is logged
    as a warning, the rest of the storm at debug level."""

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


@dataclass
class ReplyStream:
    """``message_ids``: given when the stream takes over messages shown before (recovery after a restart);
    ``drafts``: given in private chats, where the answer streams as a draft while they are available;
    ``stop_button``: shown under the part being written.

    What is shown while the answer is written (the placeholder, statuses, drafts, streaming edits) is sent only
    when Telegram's rate limit has room at that moment (bot/output/pace.py): a skipped one is carried by the next, so a
    busy group never queues them and nothing waits behind them; the final text waits for its turn."""

    bot: Bot
    chat_id: int
    record: Record
    reply_to: int | None = None
    thread_id: int | None = None
    interval: float = 1.0
    message_ids: list[int] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set at shutdown: the final text stops waiting
    patience: float = FINAL_DELIVERY_SECONDS
    drafts: Drafts | None = None
    stop_button: InlineKeyboardMarkup | None = None
    _text: str = ""
    _shown: list[str] = field(default_factory=list)
    _next_edit: float = 0.0
    _flood_until: float = 0.0
    _closed: bool = False
    _blocked: bool = False  # Telegram answered 403: the chat takes no messages from the bot (blocked, removed)
    _drafting: bool = False
    _draft_id: int = 0
    _drafted: str = ""  # the text the draft shows
    _draft_sent_at: float = 0.0  # when a draft was last sent, whatever came of it
    _refresher: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._shown = [""] * len(self.message_ids)  # what messages shown before say is not known
        self._drafting = self.drafts is not None and self.drafts.available and not self.message_ids
        self._draft_id = secrets.randbelow(2**31 - 1) + 1  # a new id per answer: never animates another's draft

    async def start(self, text: str) -> None:
        """Placeholder at once, with the typing indicator, so the user knows the bot heard them: a message
        saying ``text``, or an empty draft, which Telegram shows as its own "Thinking…"."""
        await self._call(self.bot.send_chat_action(self.chat_id, ChatAction.TYPING, message_thread_id=self.thread_id))
        if self._drafting and await self._draft(""):
            self._refresher = asyncio.create_task(self._refresh_draft())
            return
        await self._start_message(text)

    async def _start_message(self, text: str) -> None:
        """Best effort, as every message shown while the answer is written: the first update places it
        otherwise."""
        with contextlib.suppress(_Moved):
            await self._place_streaming(0, text, with_button=True)
        self._next_edit = time.monotonic() + self.interval

    def _check_open(self) -> None:
        """A chat that refused the bot (403) ends the answer at once: the model need not write for nobody."""
        if self._blocked:
            raise Undeliverable(f"chat {self.chat_id} takes no messages from the bot")

    async def status(self, text: str) -> None:
        """Queue position and the like: shown only while no answer text has arrived yet."""
        self._check_open()
        if self._closed or self._flooded():
            return
        if self._drafting:
            if not await self._draft(text):
                await self._start_message(text)
        elif len(self.message_ids) == 1:
            with contextlib.suppress(_Moved):  # the next update sends the answer to the new chat
                await self._edit_streaming(0, text, with_button=True)

    async def update(self, text: str) -> None:
        """Show the answer so far, if the interval allows; cheap to call on every chunk."""
        self._check_open()
        now = time.monotonic()
        if self._closed or now < self._next_edit or self._flooded() or not text.strip():
            return
        if self._drafting and self.drafts is not None:
            draft = plain_parts(text, TELEGRAM_TEXT_LIMIT)[-1].text  # past the limit: the part being written
            if draft == self._drafted:
                return
            self._text = text
            await self.record(text, self.message_ids)
            if await self._draft(draft):
                self._next_edit = time.monotonic() + self.drafts.interval
                return
        parts = plain_parts(text + CURSOR, TELEGRAM_TEXT_LIMIT)
        if [part.text for part in parts] == self._shown:
            return
        self._text = text
        await self.record(text, self.message_ids)
        with contextlib.suppress(_Moved):  # the next update sends every part to the new chat
            for index, part in enumerate(parts):
                last = index == len(parts) - 1
                if self._closed or self._blocked or self._flooded():  # the rest waits for the next update, in order
                    break
                if index < len(self._shown) and self._shown[index] not in (DELETED, part.text):
                    await self._edit_streaming(index, part.text, with_button=last)
                if (index == len(self._shown) or self._shown[index] == DELETED) and not await self._place_streaming(
                    index, part.text, with_button=last
                ):
                    break
        self._next_edit = time.monotonic() + self.interval

    async def finish(self, text: str, footer: str = "", markup: InlineKeyboardMarkup | None = None) -> list[int]:
        """The final, formatted answer, recorded first; returns the ids of every message it occupies.  ``markup``
        goes under its last part, where the Stop button was.

        Raises Undeliverable when the chat cannot receive it, Postponed when it has to wait for the next start."""
        self._closed = True
        await self.close()  # no draft may arrive after the final text: it would show again for 30 s
        self._text = text
        await self.record(text, self.message_ids)
        # Telegram said when it would accept more; asking earlier only earns another 429.
        await self._pause(self._flood_until - time.monotonic())
        await self._in_order(functools.partial(self._show_final, _final_parts(text, footer), markup))
        return self.message_ids

    async def _show_final(self, parts: list[FormattedPart], markup: InlineKeyboardMarkup | None) -> None:
        for index, part in enumerate(parts):
            under = markup if index == len(parts) - 1 else None
            if index < len(self._shown) and self._shown[index] != DELETED:
                await self._final_edit(index, part, under)  # may find it deleted
            if index == len(self._shown) or self._shown[index] == DELETED:
                await self._deliver(functools.partial(self._place, index, part, under))
        for index in range(len(parts), len(self.message_ids)):  # the formatted text needs fewer parts
            if self._shown[index] != DELETED and not await self._delete(index):
                await self._final_edit(index, FormattedPart("…"))
        if DELETED in self._shown[len(parts) :]:  # gone from the chat: the answer no longer occupies them
            kept = [index for index, shown in enumerate(self._shown) if index < len(parts) or shown != DELETED]
            self.message_ids = [self.message_ids[index] for index in kept]
            self._shown = [self._shown[index] for index in kept]
            await self.record(self._text, self.message_ids)

    async def close(self) -> None:
        """Stops refreshing the draft; the stream's owner calls it however the answer ends."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None

    # --- drafts -------------------------------------------------------------------------------------------

    async def _draft(self, text: str) -> bool:
        """Shows ``text`` as the draft; False once Telegram refused drafts for this answer, which then goes on
        in messages (the caller shows the text there).  Flood control and network trouble are passed over:
        the next draft carries the text."""
        self._draft_sent_at = time.monotonic()
        try:
            await self.bot.send_message_draft(
                self.chat_id,
                self._draft_id,
                text,
                message_thread_id=self.thread_id,
                rate_limit_args="now_or_never",  # type: ignore[call-arg]
            )
        except RetryAfter as error:
            self._flood(error)
        except Forbidden:
            self._blocked = True
        except (BadRequest, InvalidToken) as error:  # InvalidToken: PTB's name for a 404, "method not found"
            self._drafting = False
            if isinstance(error, InvalidToken) and self.drafts is not None:
                self.drafts.unsupported(error)
            else:
                log.warning("draft refused in chat %s (%s); this answer is edited instead", self.chat_id, error)
            return False
        except Skipped:
            log.debug("no room for a draft in chat %s now; the next one carries the text", self.chat_id)
        except TelegramError as error:
            log.info("draft failed (%s); the next one carries the text", error)
        else:
            self._drafted = text
        return True

    async def _refresh_draft(self) -> None:
        """Sends the draft again before Telegram drops it, while the answer waits in line or the model reads a
        photo; a refusal leaves the text to the next update or the final text, in messages."""
        while True:
            due = max(self._draft_sent_at + DRAFT_REFRESH_SECONDS, self._flood_until)
            await asyncio.sleep(max(due - time.monotonic(), 0.0))
            if not self._drafting or self._closed or self._blocked:
                return
            if time.monotonic() >= max(self._draft_sent_at + DRAFT_REFRESH_SECONDS, self._flood_until):
                await self._draft(self._drafted)

    # --- sending ------------------------------------------------------------------------------------------

    def _flooded(self) -> bool:
        return time.monotonic() < self._flood_until

    def _flood(self, error: RetryAfter) -> None:
        seconds = _seconds(error.retry_after)
        self._flood_until = time.monotonic() + seconds
        _floods.note(self.chat_id, seconds)

    def _follow(self, new_chat_id: int) -> _Moved:
        """A group became a supergroup: the old chat is read-only, so the answer goes on in the new one, in new
        messages (the old ones cannot be edited there, and the question is not there to reply to)."""
        log.info("chat %s moved to %s; the answer continues there", self.chat_id, new_chat_id)
        self.chat_id = new_chat_id
        self.reply_to = self.thread_id = None
        self._shown = [DELETED] * len(self._shown)
        return _Moved()

    async def _in_order(self, show: Callable[[], Awaitable[None]]) -> None:
        """Run ``show`` again when the chat moves meanwhile: the new chat gets every part, from the first."""
        for _ in range(MOVES):
            try:
                return await show()
            except _Moved:
                continue
        raise Undeliverable(f"chat {self.chat_id} keeps moving")

    async def _place(
        self, index: int, part: FormattedPart, markup: InlineKeyboardMarkup | None = None, *, now: bool = False
    ) -> None:
        """Part ``index`` as a new message, replying to the part before it (the first to the question); its id is
        recorded at once, before anything else is shown.  ``now``: only if the rate limit has room now."""
        reply_to = self.message_ids[index - 1] if index > 0 else self.reply_to
        reply = ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None
        try:
            message = await self.bot.send_message(
                self.chat_id,
                part.text,
                entities=list(part.entities) or None,
                reply_markup=markup,
                reply_parameters=reply,
                message_thread_id=self.thread_id,
                rate_limit_args="now_or_never" if now else "wait",  # type: ignore[call-arg]
            )
        except ChatMigrated as error:
            raise self._follow(error.new_chat_id) from error
        if index < len(self.message_ids):
            self.message_ids[index] = message.message_id
            self._shown[index] = part.text
        else:
            self.message_ids.append(message.message_id)
            self._shown.append(part.text)
        await self.record(self._text, self.message_ids)

    async def _place_streaming(self, index: int, text: str, *, with_button: bool) -> bool:
        """Best effort: a part that cannot be sent now is sent by a later update or by the final text."""
        try:
            await self._place(index, FormattedPart(text), self.stop_button if with_button else None, now=True)
        except RetryAfter as error:
            self._flood(error)
        except Forbidden:
            self._blocked = True
        except Skipped:
            log.debug("chat %s has no room for a streaming message now; a later update carries it", self.chat_id)
        except TelegramError as error:
            log.info("could not send a streaming message (%s); the final text will carry it", error)
        else:
            return True
        return False

    async def _restart_from(self, index: int) -> None:
        """Part ``index`` is gone, or can no longer be edited: it and every later part are to be sent anew, and
        the old copies are deleted so that no part shows twice; a copy that cannot be deleted at least loses its
        button, so no dead Stop button is left behind."""
        for later in range(index, len(self.message_ids)):
            if self._shown[later] != DELETED and not await self._delete(later):
                await unbutton(self.bot, self.chat_id, self.message_ids[later])
        self._shown[index:] = [DELETED] * (len(self._shown) - index)

    async def _delete(self, index: int) -> bool:
        """Best effort: the bot deletes its own message, a part the answer no longer needs where it is."""
        try:
            await self.bot.delete_message(self.chat_id, self.message_ids[index])
        except TelegramError as error:
            log.info("could not delete message %s in chat %s: %s", self.message_ids[index], self.chat_id, error)
            return False
        self._shown[index] = DELETED
        return True

    async def _edit_streaming(self, index: int, text: str, *, with_button: bool) -> None:
        """Best effort: a failed streaming edit is skipped, the next one (or the final) carries the text."""
        message_id = self.message_ids[index]
        try:
            await self.bot.edit_message_text(
                text,
                self.chat_id,
                message_id,
                reply_markup=self.stop_button if with_button else None,
                rate_limit_args="now_or_never",  # type: ignore[call-arg]
            )
            self._shown[index] = text
        except RetryAfter as error:
            self._flood(error)
        except BadRequest as error:
            if _not_modified(error):
                self._shown[index] = text
            elif _message_gone(error):
                log.info("message %s in chat %s was deleted; the answer is sent anew from it", message_id, self.chat_id)
                await self._restart_from(index)
            else:
                log.warning("streaming edit refused: %s", error.message)
        except ChatMigrated as error:
            raise self._follow(error.new_chat_id) from error
        except Forbidden:
            self._blocked = True
        except Skipped:
            log.debug("chat %s has no room for a streaming edit now; the next update carries the text", self.chat_id)
        except NetworkError as error:
            log.info("streaming edit failed (%s); will retry with the next chunk", error)

    async def _final_edit(self, index: int, part: FormattedPart, markup: InlineKeyboardMarkup | None = None) -> None:
        message_id = self.message_ids[index]

        async def edit() -> None:
            try:
                await self.bot.edit_message_text(
                    part.text, self.chat_id, message_id, entities=list(part.entities) or None, reply_markup=markup
                )
            except ChatMigrated as error:
                raise self._follow(error.new_chat_id) from error
            except BadRequest as error:
                if _not_modified(error):
                    return
                if _message_gone(error):
                    await self._restart_from(index)
                elif part.entities:  # entities Telegram refused: the words matter more than the bold
                    log.warning("formatted final text refused (%s); sending it plain", error.message)
                    await self.bot.edit_message_text(part.text, self.chat_id, message_id, reply_markup=markup)
                else:
                    raise

        await self._deliver(edit)
        if self._shown[index] != DELETED:
            self._shown[index] = part.text

    async def _deliver(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry until delivered: flood control and network trouble are temporary, a blocked bot is not. Once
        the bot is stopping, or after ``patience`` seconds, nothing more is waited for."""
        give_up_at = time.monotonic() + self.patience

        def stop(state: RetryCallState) -> bool:
            return self.stopping.is_set() or time.monotonic() + state.upcoming_sleep > give_up_at

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_temporary),
                wait=_wait_for,
                stop=stop,
                sleep=self._pause,
                before_sleep=self._note_retry,
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

    def _note_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, RetryAfter):
            _floods.note(self.chat_id, _seconds(error.retry_after))

    async def _pause(self, seconds: float) -> None:
        """Sleep, but not past the start of a shutdown."""
        if seconds > 0 and not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), seconds)

    @staticmethod
    async def _call(coroutine: Awaitable[object]) -> None:
        try:
            await coroutine
        except TelegramError as error:
            log.debug("chat action failed: %s", error)
