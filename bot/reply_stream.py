"""One streamed answer in a chat: a placeholder, throttled edits as text arrives, then the final formatting.

Rules it keeps:
* at most one edit per ``interval`` (Telegram throttles chats that edit faster; groups get a longer interval),
  and no edit when the visible text did not change;
* plain text while streaming (a half-written Markdown answer would not parse), entities at the end;
* past Telegram's 4096-unit limit the answer continues in a new message, replying to the previous part;
* flood control (429) and network errors never lose text: streaming edits are postponed, the final text is
  retried with tenacity until it is delivered or clearly undeliverable (blocked, chat gone);
* if the user deletes the message being edited, the rest goes into a new message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Message, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter, TelegramError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from bot.formatting import TELEGRAM_TEXT_LIMIT, FormattedPart, formatted_parts, plain_parts

log = logging.getLogger(__name__)

STOP_CALLBACK = "stop"
CURSOR = " ▌"
FINAL_DELIVERY_SECONDS = 300.0
DELETED = "\0deleted"  # stands in the shown text of a message that can no longer be edited


class Undeliverable(Exception):
    """The chat cannot receive messages any more (bot blocked or removed, chat deleted)."""


def stop_keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton("⏹ Stop", callback_data=STOP_CALLBACK)]])


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


def _wait_for(state: object) -> float:
    """tenacity wait: honour Telegram's retry_after exactly, back off exponentially otherwise."""
    outcome = state.outcome  # type: ignore[attr-defined]
    error = outcome.exception() if outcome is not None else None
    if isinstance(error, RetryAfter):
        return _seconds(error.retry_after) + 0.1
    return wait_exponential(multiplier=0.5, max=10)(state)  # type: ignore[arg-type]


@dataclass
class ReplyStream:
    bot: Bot
    chat_id: int
    reply_to: int | None = None
    thread_id: int | None = None
    interval: float = 1.0
    messages: list[Message] = field(default_factory=list)
    _shown: list[str] = field(default_factory=list)
    _next_edit: float = 0.0
    _flood_until: float = 0.0
    _closed: bool = False

    @property
    def message_ids(self) -> list[int]:
        return [message.message_id for message in self.messages]

    async def start(self, text: str) -> None:
        """Placeholder at once, with the typing indicator, so the user knows the bot heard them."""
        await self._call(self.bot.send_chat_action(self.chat_id, ChatAction.TYPING, message_thread_id=self.thread_id))
        message = await self._deliver(lambda: self._send(text, (), stop_keyboard(), self.reply_to))
        self.messages.append(message)
        self._shown.append(text)
        self._next_edit = time.monotonic() + self.interval

    async def status(self, text: str) -> None:
        """Queue position and the like: shown only while no answer text has arrived yet."""
        if len(self.messages) == 1 and not self._closed and time.monotonic() >= self._flood_until:
            await self._edit_streaming(0, text, with_button=True)

    async def update(self, text: str) -> None:
        """Show the answer so far, if the interval allows; cheap to call on every chunk."""
        now = time.monotonic()
        if self._closed or now < max(self._next_edit, self._flood_until) or not text.strip():
            return
        parts = plain_parts(text + CURSOR, TELEGRAM_TEXT_LIMIT)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if index < len(self.messages):
                if self._shown[index] == DELETED:
                    await self._resend(index, part.text, with_button=last)
                elif self._shown[index] != part.text:
                    await self._edit_streaming(index, part.text, with_button=last)
            else:
                await self._continue(part.text, with_button=last)
        self._next_edit = time.monotonic() + self.interval

    async def finish(self, text: str, footer: str = "") -> list[int]:
        """The final, formatted answer; returns the ids of every message it occupies."""
        self._closed = True
        flood_wait = self._flood_until - time.monotonic()
        if flood_wait > 0:  # Telegram said when it would accept more; asking earlier only earns another 429
            await asyncio.sleep(flood_wait)
        parts = formatted_parts(text) if text.strip() else [FormattedPart(footer.strip() or "…")]
        if footer and text.strip():
            parts = [*parts[:-1], FormattedPart(parts[-1].text + footer, parts[-1].entities)]
            if len(parts[-1].text) > TELEGRAM_TEXT_LIMIT:
                parts = [
                    *parts[:-1],
                    FormattedPart(parts[-1].text[: -len(footer)], parts[-1].entities),
                    FormattedPart(footer.strip()),
                ]
        for index, part in enumerate(parts):
            if index < len(self.messages):
                await self._final_edit(index, part)
            else:
                await self._final_send(part)
        for index in range(len(parts), len(self.messages)):
            await self._final_edit(index, FormattedPart("…"))
        return self.message_ids

    # --- sending ------------------------------------------------------------------------------------------

    def _follow(self, new_chat_id: int) -> None:
        """A group became a supergroup: the old chat is read-only, so the answer goes on in the new one, in new
        messages (the old ones cannot be edited there, and the question is not there to reply to)."""
        log.info("chat %s moved to %s; the answer continues there", self.chat_id, new_chat_id)
        self.chat_id = new_chat_id
        self.reply_to = self.thread_id = None
        self._shown = [DELETED] * len(self._shown)

    async def _send(
        self, text: str, entities: Sequence[object], markup: InlineKeyboardMarkup | None, reply_to: int | None
    ) -> Message:
        try:
            return await self._send_once(text, entities, markup, reply_to)
        except ChatMigrated as error:
            self._follow(error.new_chat_id)
            return await self._send_once(text, entities, markup, None)

    async def _send_once(
        self, text: str, entities: Sequence[object], markup: InlineKeyboardMarkup | None, reply_to: int | None
    ) -> Message:
        reply = ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None
        return await self.bot.send_message(
            self.chat_id,
            text,
            entities=list(entities) or None,
            reply_markup=markup,
            reply_parameters=reply,
            message_thread_id=self.thread_id,
        )

    async def _continue(self, text: str, *, with_button: bool) -> None:
        previous = self.messages[-1]
        if len(self.messages) >= 1:
            await self._edit_streaming(len(self.messages) - 1, self._shown[-1].removesuffix(CURSOR), with_button=False)
        try:
            message = await self._send(text, (), stop_keyboard() if with_button else None, previous.message_id)
        except RetryAfter as error:
            self._flood_until = time.monotonic() + _seconds(error.retry_after)
            return
        self.messages.append(message)
        self._shown.append(text)

    async def _resend(self, index: int, text: str, *, with_button: bool) -> None:
        """A message deleted (or left behind in a migrated group) while streaming is sent anew."""
        try:
            message = await self._send(text, (), stop_keyboard() if with_button else None, self.reply_to)
        except RetryAfter as error:
            self._flood_until = time.monotonic() + _seconds(error.retry_after)
            return
        except Forbidden:
            self._closed = True
            return
        except TelegramError as error:
            log.info("could not resend a streaming message (%s); the final text will carry it", error)
            return
        self.messages[index] = message
        self._shown[index] = text

    async def _edit_streaming(self, index: int, text: str, *, with_button: bool) -> None:
        """Best effort: a failed streaming edit is skipped, the next one (or the final) carries the text."""
        message = self.messages[index]
        try:
            await self.bot.edit_message_text(
                text, self.chat_id, message.message_id, reply_markup=stop_keyboard() if with_button else None
            )
            self._shown[index] = text
        except RetryAfter as error:
            self._flood_until = time.monotonic() + _seconds(error.retry_after)
        except BadRequest as error:
            if _not_modified(error):
                self._shown[index] = text
            elif _message_gone(error):
                log.info("message %s in chat %s was deleted; continuing in a new one", message.message_id, self.chat_id)
                self._shown[index] = DELETED
            else:
                log.warning("streaming edit refused: %s", error.message)
        except ChatMigrated as error:
            self._follow(error.new_chat_id)
        except Forbidden:
            self._closed = True
        except NetworkError as error:
            log.info("streaming edit failed (%s); will retry with the next chunk", error)

    async def _final_edit(self, index: int, part: FormattedPart) -> None:
        message = self.messages[index]
        if self._shown[index] == DELETED:
            self.messages[index] = await self._deliver(
                lambda: self._send(part.text, part.entities, None, self.reply_to)
            )
            self._shown[index] = part.text
            return

        async def replace_message() -> Message:
            replacement = await self._send(part.text, part.entities, None, self.reply_to)
            self.messages[index] = replacement
            return replacement

        async def edit() -> Message | bool:
            try:
                return await self.bot.edit_message_text(
                    part.text, self.chat_id, message.message_id, entities=list(part.entities) or None, reply_markup=None
                )
            except ChatMigrated as error:
                self._follow(error.new_chat_id)
                return await replace_message()
            except BadRequest as error:
                if _not_modified(error):
                    return True
                if _message_gone(error):
                    return await replace_message()
                if part.entities:  # entities Telegram refused: the words matter more than the bold
                    log.warning("formatted final text refused (%s); sending it plain", error.message)
                    return await self.bot.edit_message_text(
                        part.text, self.chat_id, message.message_id, reply_markup=None
                    )
                raise

        await self._deliver(edit)
        self._shown[index] = part.text

    async def _final_send(self, part: FormattedPart) -> None:
        previous = self.messages[-1].message_id if self.messages else self.reply_to
        message = await self._deliver(lambda: self._send(part.text, part.entities, None, previous))
        self.messages.append(message)
        self._shown.append(part.text)

    async def _deliver(self, call: object) -> Message:
        """Retry until delivered: flood control and network trouble are temporary, a blocked bot is not."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_temporary),
                wait=_wait_for,
                stop=stop_after_delay(FINAL_DELIVERY_SECONDS),
                reraise=True,
            ):
                with attempt:
                    return await call()  # type: ignore[operator]
        except (Forbidden, ChatMigrated) as error:
            raise Undeliverable(str(error)) from error
        raise AssertionError("unreachable")

    @staticmethod
    async def _call(coroutine: object) -> None:
        try:
            await coroutine  # type: ignore[misc]
        except TelegramError as error:
            log.debug("chat action failed: %s", error)
