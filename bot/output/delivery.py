"""How one answer's messages reach a chat, whichever view streams it (bot/output/drafts.py, bot/output/edits.py):
one message per part of at most 4096 units, each part replying to the one before it (the first to the question).

Rules it keeps:
* nothing is shown that is not recorded first: ``record`` gets the answer's text and every message id before
  an edit or a send shows them, and again as soon as a send gives a new part its id, so that recovery after a
  crash can repair every part (bot/output/recovery.py);
* what is shown while the answer is written is best effort, sent only when Telegram's rate limit has room at
  that moment (bot/output/pace.py): a part not shown now is carried by the next update or by the final text;
  the final text waits for its turn, retried until delivered (bot/output/retries.py);
* a part the user deletes is sent anew, and so is every part after it (the bot deletes its old copies): a chat
  orders messages by when they were sent, so this is the only way the answer still reads in order;
* a group that becomes a supergroup gets the answer in the new chat, every part anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from telegram import Bot, InlineKeyboardMarkup, ReplyParameters
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter, TelegramError

from bot.output.chat import unbutton
from bot.output.formatting import TELEGRAM_TEXT_LIMIT, FormattedPart, formatted_parts, headed, utf16_len
from bot.output.pace import Skipped
from bot.output.retries import Undeliverable, deliver, flood_seconds, pause

log = logging.getLogger(__name__)

MOVES = 3  # a chat that moves more often than this while one answer is shown is given up
DELETED = "\0deleted"  # stands in the shown text of a message that can no longer be edited

T = TypeVar("T")
Record = Callable[[str, Sequence[int]], Awaitable[None]]


class Moved(Exception):
    """The chat moved (a group became a supergroup) while a part was being shown: every part is to be sent to
    the new chat anew, from the first."""


def _not_modified(error: BadRequest) -> bool:
    return "not modified" in error.message.lower()


def _message_gone(error: BadRequest) -> bool:
    text = error.message.lower()
    return "message to edit not found" in text or "message can't be edited" in text


def _final_parts(text: str, footer: str, header: str = "") -> list[FormattedPart]:
    """The formatted answer with its header and footer; the footer alone (or "…") when there are no words."""
    if not text.strip():
        return [FormattedPart(header + (footer.strip() or "…"))]
    parts = formatted_parts(text, TELEGRAM_TEXT_LIMIT - utf16_len(header))
    if header:
        parts[0] = headed(header, parts[0])
    if footer:
        parts = [*parts[:-1], FormattedPart(parts[-1].text + footer, parts[-1].entities)]
        if utf16_len(parts[-1].text) > TELEGRAM_TEXT_LIMIT:
            parts = [
                *parts[:-1],
                FormattedPart(parts[-1].text[: -len(footer)], parts[-1].entities),
                FormattedPart(footer.strip()),
            ]
    return parts


@dataclass
class Delivery:
    """``message_ids``: a message per part, given when the answer takes over messages shown before (recovery
    after a restart); ``shown``: what each says, as far as the bot knows; ``patience``: how long the final text
    may wait for Telegram before it is left for the next start."""

    bot: Bot
    chat_id: int
    record: Record
    reply_to: int | None
    thread_id: int | None
    message_ids: list[int]
    stopping: asyncio.Event  # set at shutdown: the final text stops waiting
    patience: float
    text: str = ""  # the answer as last recorded
    header: str = ""  # shown above the answer in every view, and never recorded as its text (what was heard)
    shown: list[str] = field(init=False)
    flood_until: float = 0.0
    blocked: bool = False  # Telegram answered 403: the chat takes no messages from the bot (blocked, removed)
    closed: bool = False  # the final text is on its way: nothing shown while the answer is written may follow it

    def __post_init__(self) -> None:
        self.shown = [""] * len(self.message_ids)  # what messages shown before say is not known

    def check_open(self) -> None:
        """A chat that refused the bot (403) ends the answer at once: the model need not write for nobody."""
        if self.blocked:
            raise Undeliverable(f"chat {self.chat_id} takes no messages from the bot")

    def flooded(self) -> bool:
        return time.monotonic() < self.flood_until

    def flood(self, error: RetryAfter) -> None:
        self.flood_until = time.monotonic() + flood_seconds(self.chat_id, error)

    async def save(self, text: str) -> None:
        """The answer so far, recorded with every message it occupies before anything shows it."""
        self.text = text
        await self.record(text, self.message_ids)

    # --- while the answer is written: best effort -------------------------------------------------------

    async def show_now(self, texts: Sequence[str], markup: InlineKeyboardMarkup | None) -> None:
        """Each part edited or sent as the rate limit allows now, in order, ``markup`` under the last: what is
        not shown now waits for the next update, and a chat that moved gets every part from the next one."""
        with contextlib.suppress(Moved):
            for index, text in enumerate(texts):
                under = markup if index == len(texts) - 1 else None
                if self.closed or self.blocked or self.flooded():
                    break
                if index < len(self.shown) and self.shown[index] not in (DELETED, text):
                    await self.edit_now(index, text, under)
                if (index == len(self.shown) or self.shown[index] == DELETED) and not await self.place_now(
                    index, text, under
                ):
                    break

    async def place_now(self, index: int, text: str, markup: InlineKeyboardMarkup | None) -> bool:
        """Part ``index`` as a new message if the rate limit has room now; a part that cannot be sent now is
        sent by a later update or by the final text.  Raises Moved."""
        try:
            await self._place(index, FormattedPart(text), markup, now=True)
        except RetryAfter as error:
            self.flood(error)
        except Forbidden:
            self.blocked = True
        except Skipped:
            log.debug("chat %s has no room for a streaming message now; a later update carries it", self.chat_id)
        except TelegramError as error:
            log.info("could not send a streaming message (%s); the final text will carry it", error)
        else:
            return True
        return False

    async def edit_now(self, index: int, text: str, markup: InlineKeyboardMarkup | None) -> None:
        """Part ``index`` edited if the rate limit has room now; a failed edit is skipped, the next one (or the
        final) carries the text.  Raises Moved."""
        message_id = self.message_ids[index]
        try:
            await self.bot.edit_message_text(
                text,
                self.chat_id,
                message_id,
                reply_markup=markup,
                rate_limit_args="now_or_never",  # type: ignore[call-arg]
            )
            self.shown[index] = text
        except RetryAfter as error:
            self.flood(error)
        except BadRequest as error:
            if _not_modified(error):
                self.shown[index] = text
            elif _message_gone(error):
                log.info("message %s in chat %s was deleted; the answer is sent anew from it", message_id, self.chat_id)
                await self._restart_from(index)
            else:
                log.warning("streaming edit refused: %s", error.message)
        except ChatMigrated as error:
            raise self._follow(error.new_chat_id) from error
        except Forbidden:
            self.blocked = True
        except Skipped:
            log.debug("chat %s has no room for a streaming edit now; the next update carries the text", self.chat_id)
        except NetworkError as error:
            log.info("streaming edit failed (%s); will retry with the next chunk", error)

    # --- the final text: delivered, or left for the next start ------------------------------------------

    async def finish(self, text: str, footer: str, markup: InlineKeyboardMarkup | None) -> list[int]:
        """The final, formatted answer, recorded first; returns the ids of every message it occupies.  ``markup``
        goes under its last part.

        Raises Undeliverable when the chat cannot receive it, Postponed when it has to wait for the next start."""
        self.closed = True
        await self.save(text)
        # Telegram said when it would accept more; asking earlier only earns another 429.
        await pause(self.stopping, self.flood_until - time.monotonic())
        await self._in_order(functools.partial(self._show_final, _final_parts(text, footer, self.header), markup))
        return self.message_ids

    async def _show_final(self, parts: list[FormattedPart], markup: InlineKeyboardMarkup | None) -> None:
        for index, part in enumerate(parts):
            under = markup if index == len(parts) - 1 else None
            if index < len(self.shown) and self.shown[index] != DELETED:
                await self._final_edit(index, part, under)  # may find it deleted
            if index == len(self.shown) or self.shown[index] == DELETED:
                await self._deliver(functools.partial(self._place, index, part, under))
        for index in range(len(parts), len(self.message_ids)):  # the formatted text needs fewer parts
            if self.shown[index] != DELETED and not await self._delete(index):
                await self._final_edit(index, FormattedPart("…"))
        if DELETED in self.shown[len(parts) :]:  # gone from the chat: the answer no longer occupies them
            kept = [index for index, shown in enumerate(self.shown) if index < len(parts) or shown != DELETED]
            self.message_ids = [self.message_ids[index] for index in kept]
            self.shown = [self.shown[index] for index in kept]
            await self.record(self.text, self.message_ids)

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
        if self.shown[index] != DELETED:
            self.shown[index] = part.text

    async def _deliver(self, call: Callable[[], Awaitable[T]]) -> T:
        return await deliver(call, chat_id=self.chat_id, stopping=self.stopping, patience=self.patience)

    # --- either way ---------------------------------------------------------------------------------------

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
            self.shown[index] = part.text
        else:
            self.message_ids.append(message.message_id)
            self.shown.append(part.text)
        await self.record(self.text, self.message_ids)

    async def _restart_from(self, index: int) -> None:
        """Part ``index`` is gone, or can no longer be edited: it and every later part are to be sent anew, and
        the old copies are deleted so that no part shows twice; a copy that cannot be deleted at least loses its
        button, so no dead Stop button is left behind."""
        for later in range(index, len(self.message_ids)):
            if self.shown[later] != DELETED and not await self._delete(later):
                await unbutton(self.bot, self.chat_id, self.message_ids[later])
        self.shown[index:] = [DELETED] * (len(self.shown) - index)

    async def _delete(self, index: int) -> bool:
        """Best effort: the bot deletes its own message, a part the answer no longer needs where it is."""
        try:
            await self.bot.delete_message(self.chat_id, self.message_ids[index])
        except TelegramError as error:
            log.info("could not delete message %s in chat %s: %s", self.message_ids[index], self.chat_id, error)
            return False
        self.shown[index] = DELETED
        return True

    def _follow(self, new_chat_id: int) -> Moved:
        """A group became a supergroup: the old chat is read-only, so the answer goes on in the new one, in new
        messages (the old ones cannot be edited there, and the question is not there to reply to)."""
        log.info("chat %s moved to %s; the answer continues there", self.chat_id, new_chat_id)
        self.chat_id = new_chat_id
        self.reply_to = self.thread_id = None
        self.shown = [DELETED] * len(self.shown)
        return Moved()

    async def _in_order(self, show: Callable[[], Awaitable[None]]) -> None:
        """Run ``show`` again when the chat moves meanwhile: the new chat gets every part, from the first."""
        for _ in range(MOVES):
            try:
                return await show()
            except Moved:
                continue
        raise Undeliverable(f"chat {self.chat_id} keeps moving")
