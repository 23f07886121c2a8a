"""Slash commands and the Stop button: help, reset, stop, model info, and the admin's convert and stats."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cachetools import TTLCache
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ChatMemberStatus
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot import texts
from bot.chat import conversation_key, is_private
from bot.history import ConversationKey
from bot.runtime import build_engine, load_and_swap
from bot.services import Services
from model_store.convert import ConversionRequest, convert_async, hub
from model_store.convert.extra import require_conversion_extra
from model_store.convert.heartbeat import format_elapsed
from model_store.errors import MissingDependencyError, ModelStoreError
from model_store.progress import Progress
from model_store.sources import PRECISIONS, parse_source
from model_store.store import ModelEntry, ModelStore

log = logging.getLogger(__name__)

PROGRESS_EDIT_SECONDS = 3.0
# "convert:yes:<id>" and "convert:no:<id>", the buttons under the question whether to run a repository's code
CONFIRM_CALLBACK = "convert"
PERSONA_MAX_CHARS = 1000  # a system prompt this long still leaves most of the context to the conversation
CONFIRM_SECONDS = 15 * 60  # a question left unanswered longer is asked again: the repository may have changed


@dataclass(frozen=True)
class _Confirmation:
    """A conversion waiting for an admin to accept running the code of one pinned revision."""

    pinned: hub.Snapshot
    precision: str


class Commands:
    """Every command first checks the allowlists the way questions do: someone not allowed is told so in a
    private chat and ignored in a group (a group need not hear about each member's access)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._confirmations: TTLCache[str, _Confirmation] = TTLCache(maxsize=16, ttl=CONFIRM_SECONDS)

    def _admin(self, update: Update) -> bool:
        user = update.effective_user
        return self.services.access.is_admin(user.id if user else None)

    async def _allowed(self, update: Update) -> Message | None:
        """The command's message if its sender may use the bot here; None once a refusal is dealt with."""
        message = update.effective_message
        if message is None:
            return None
        user_id = update.effective_user.id if update.effective_user else None
        if self.services.access.may_ask(user_id, message.chat_id):
            return message
        log.info("refused %r from user %s in chat %s: not on the allowlist", message.text, user_id, message.chat_id)
        if is_private(message):
            await message.reply_text(texts.NOT_ALLOWED)
        return None

    async def _for_admins(self, update: Update) -> Message | None:
        message = await self._allowed(update)
        if message is not None and not self._admin(update):
            user_id = update.effective_user.id if update.effective_user else None
            log.info("refused %r from user %s in chat %s: not an admin", message.text, user_id, message.chat_id)
            await message.reply_text(texts.ADMINS_ONLY)
            return None
        return message

    def _may_stop(self, update: Update, key: ConversationKey) -> bool:
        """The person who asked and the bot's admins may stop an answer, with /stop as with the Stop button."""
        user = update.effective_user
        return self.services.answers.may_stop(key, user.id if user else None, self._admin(update))

    async def _may_manage(self, update: Update, message: Message) -> bool:
        """A group's conversation belongs to all its members: its Telegram administrators (asked of Telegram
        each time, so a demotion counts at once) and the bot's admins may wipe it or change its persona; in a
        private chat, the user."""
        if is_private(message) or self._admin(update):
            return True
        if message.sender_chat is not None and message.sender_chat.id == message.chat_id:
            return True  # an anonymous administrator, writing as the group itself
        user = update.effective_user
        if user is None:
            return False
        try:
            member = await message.chat.get_member(user.id)
        except TelegramError as error:
            log.info("could not ask whether user %s administers chat %s: %s", user.id, message.chat_id, error)
            return False
        return member.status in (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)

    async def help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = await self._allowed(update)
        if message is not None:
            await message.reply_text(texts.HELP + (texts.ADMIN_HELP if self._admin(update) else ""))

    async def reset(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = await self._allowed(update)
        if message is None:
            return
        if not await self._may_manage(update, message):
            await message.reply_text(texts.GROUP_ADMINS_ONLY)
            return
        key = conversation_key(message)
        self.services.answers.stop(key)
        if self.services.engine is not None:
            self.services.engine.forget(key)
        history = self.services.history
        removed = await history.reset(key)
        log.info("chat %s reset (%d messages)", message.chat_id, removed)
        kept = await history.persona(key) is not None
        await message.reply_text(texts.RESET_DONE + (texts.PERSONA_KEPT if kept else ""))

    async def persona(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/persona shows the conversation's system prompt, /persona TEXT sets it, /persona reset returns it to
        SYSTEM_PROMPT.  The conversation itself stays: the model reads it anew after the new persona."""
        message = await self._allowed(update)
        if message is None:
            return
        key = conversation_key(message)
        history = self.services.history
        text = _command_argument(message.text or "")
        if not text:
            await message.reply_text(
                texts.persona_shown(await history.persona(key), self.services.settings.system_prompt)
            )
            return
        if not await self._may_manage(update, message):
            await message.reply_text(texts.PERSONA_ADMINS_ONLY)
            return
        if len(text) > PERSONA_MAX_CHARS:
            await message.reply_text(texts.persona_too_long(len(text), PERSONA_MAX_CHARS))
            return
        reset = text.lower() == "reset"
        await history.set_persona(key, None if reset else text)
        log.info("chat %s: persona %s", message.chat_id, "reset" if reset else f"set ({len(text)} characters)")
        self.services.prepare_soon(key)
        await message.reply_text(texts.PERSONA_RESET if reset else texts.PERSONA_SET)

    async def stop(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = await self._allowed(update)
        if message is None:
            return
        key = conversation_key(message)
        if not self._may_stop(update, key):
            await message.reply_text(texts.ASKER_ONLY)
            return
        stopped = self.services.answers.stop(key)
        await message.reply_text(texts.STOPPING if stopped else texts.NOTHING_TO_STOP)

    async def stop_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or query.message is None or not isinstance(query.message, Message):
            return
        key = conversation_key(query.message)
        if not self._may_stop(update, key):
            await query.answer(texts.ASKER_ONLY)
            return
        stopped = self.services.answers.stop(key)
        await query.answer(texts.STOPPING if stopped else texts.NOTHING_TO_STOP)

    async def model(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = await self._allowed(update)
        if message is None:
            return
        engine = self.services.engine
        if engine is None:
            await message.reply_text(texts.NO_MODEL)
            return
        entry = engine.model.entry
        lines = [
            f"Model: {_model_name(entry, self._admin(update))}"
            + (" (synthetic test model)" if entry.synthetic else ""),
            f"Precision: {entry.precision}",
            f"Device: {engine.model.device}",
            f"Queue: {engine.queue.running} answering, {engine.queue.waiting} waiting",
        ]
        await message.reply_text("\n".join(lines))

    async def stats(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = await self._for_admins(update)
        if message is None:
            return
        history = await self.services.history.stats()
        lines = [f"Uptime: {format_elapsed(time.monotonic() - self.services.started_at)}"]
        engine = self.services.engine
        if engine is not None:
            s = engine.stats
            lines += [
                f"Answered: {s.answered}, stopped: {s.cancelled}, timed out: {s.timed_out}, failed: {s.failed}",
                f"Tokens generated: {s.generated_tokens}, busy: {format_elapsed(s.busy_seconds)}",
                f"Queue: {engine.queue.running} answering, {engine.queue.waiting} waiting, "
                f"{engine.queue.served} served",
            ]
        lines.append(
            f"History: {history.conversations} chats, {history.messages} messages, {history.images} images, "
            f"{history.database_bytes / 1e6:.1f} MB"
        )
        await message.reply_text("\n".join(lines))

    # --- conversion ----------------------------------------------------------------------------------------

    async def convert(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = await self._for_admins(update)
        if message is None:
            return
        if self._converting():
            await message.reply_text(texts.CONVERSION_RUNNING)
            return
        try:
            require_conversion_extra()
        except MissingDependencyError as error:
            await message.reply_text(f"❌ {error}")
            return
        settings = self.services.settings
        args = list(context.args or [])
        precision = settings.precision
        if args and args[-1].lower() in PRECISIONS:
            precision = args.pop().lower()
        model = args[0] if args else settings.model
        try:
            source = parse_source(model)
            if not source.vouched_for:  # its code would run here: the admin sees which revision and confirms
                assert source.repo_id is not None
                pinned = await asyncio.to_thread(hub.snapshot, source.repo_id, hub.CHECKPOINT_PATTERNS)
                await self._ask_to_trust(message, pinned, precision)
                return
        except ModelStoreError as error:
            await message.reply_text(f"❌ {error}")
            return
        status = await message.reply_text(f"🔧 Converting {model} to {precision}…", do_quote=not is_private(message))
        self.services.conversion = asyncio.create_task(self._convert(status, model, precision))

    def _converting(self) -> bool:
        return self.services.conversion is not None and not self.services.conversion.done()

    async def _ask_to_trust(self, message: Message, pinned: hub.Snapshot, precision: str) -> None:
        ticket = secrets.token_urlsafe(8)
        self._confirmations[ticket] = _Confirmation(pinned, precision)
        buttons = [
            [
                InlineKeyboardButton(
                    texts.trust_button(pinned.repo_id, pinned.revision),
                    callback_data=f"{CONFIRM_CALLBACK}:yes:{ticket}",
                )
            ],
            [InlineKeyboardButton("Cancel", callback_data=f"{CONFIRM_CALLBACK}:no:{ticket}")],
        ]
        await message.reply_text(
            texts.trust_remote_code(pinned.repo_id, pinned.revision),
            reply_markup=InlineKeyboardMarkup(buttons),
            do_quote=not is_private(message),
            disable_web_page_preview=True,
        )

    async def confirm_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """An admin's answer to whether a repository's code may run; the question's message then shows the
        conversion's progress."""
        query = update.callback_query
        if query is None or not isinstance(query.message, Message) or query.data is None:
            return
        if not self._admin(update):
            await query.answer(texts.ADMINS_ONLY)
            return
        _, choice, ticket = query.data.split(":", 2)
        confirmation = self._confirmations.pop(ticket, None)
        if confirmation is None or choice != "yes":
            await query.answer()
            await query.message.edit_text(
                texts.CONFIRMATION_EXPIRED if confirmation is None else texts.CONVERSION_CANCELLED
            )
            return
        if self._converting():
            self._confirmations[ticket] = confirmation  # still valid once the running one ends
            await query.answer(texts.CONVERSION_RUNNING)
            return
        await query.answer()
        pinned = confirmation.pinned
        log.info("admin %s confirmed running the code of %s at %s", query.from_user.id, pinned.repo_id, pinned.revision)
        model = f"{pinned.repo_id}@{pinned.revision[:12]}"
        await query.message.edit_text(f"🔧 Converting {model} to {confirmation.precision}…")
        self.services.conversion = asyncio.create_task(
            self._convert(query.message, model, confirmation.precision, pinned=pinned)
        )

    async def _convert(self, status: Message, model: str, precision: str, pinned: hub.Snapshot | None = None) -> None:
        """Runs as a task: progress is shown by editing one message every few seconds, whatever the pace.
        ``pinned``: the revision of a repository whose code the admin agreed to run, and only that one."""
        settings = self.services.settings
        started = time.monotonic()
        header = f"🔧 Converting {model} to {precision}"
        latest: list[Progress] = []

        async def show(text: str) -> None:
            try:
                await status.edit_text(text)
            except TelegramError as error:
                log.info("conversion progress edit failed: %s", error)

        async def report() -> None:
            shown: Progress | None = None
            while True:
                await asyncio.sleep(PROGRESS_EDIT_SECONDS)
                if latest and latest[-1] != shown:
                    shown = latest[-1]
                    await show(f"{header}\n{shown.percent:.0f}% — {shown.phase}: {shown.detail}")

        # Chosen for the next start (active.json) only once it has loaded here, so a model that fails to load
        # is not the one a restart loads.
        request = ConversionRequest(
            source=pinned.repo_id if pinned else model,
            store_root=str(settings.store_dir),
            precision=precision,
            activate=False,
            device=settings.device,
            revision=pinned.revision if pinned else None,
            trust_remote_code=pinned is not None,
        )
        reporter = asyncio.create_task(report())
        try:
            entry = await convert_async(request, lambda update: latest.__setitem__(slice(None), [update]))
            reporter.cancel()
            await show(f"{header}\nLoading the new model…")
            if self.services.engine is None:
                self.services.engine = await build_engine(settings, entry)
            else:
                await load_and_swap(self.services.engine, settings, entry)
            ModelStore(settings.store_dir).set_active(entry)
            if settings.warm_up_hours > 0:  # the new model has read nothing yet
                self.services.warm_up(time.time() - settings.warm_up_hours * 3600)
        except ModelStoreError as error:
            await show(f"❌ {error}")
            return
        except Exception as error:
            log.exception("conversion or loading failed")
            await show(f"❌ The new model could not be loaded ({error}). The previous model keeps serving.")
            return
        finally:
            reporter.cancel()
        elapsed = format_elapsed(time.monotonic() - started)
        await show(f"✅ Now serving {entry.source} ({entry.precision}). Took {elapsed}.")


def _command_argument(text: str) -> str:
    """What follows the command, its line breaks kept (``context.args`` splits it into words)."""
    parts = text.split(maxsplit=1)
    return parts[1].strip() if len(parts) == 2 else ""


def _model_name(entry: ModelEntry, admin: bool) -> str:
    """A model converted from a directory is named by its path on this server, which only admins see."""
    path = Path(entry.source)
    return entry.source if admin or not path.is_absolute() else f"{path.name} (converted from a local directory)"
