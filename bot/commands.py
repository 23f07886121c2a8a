"""Slash commands and the Stop button: help, reset, stop, model info, and the admin's convert and stats."""

from __future__ import annotations

import asyncio
import logging
import time

from telegram import Message, Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot import texts
from bot.handlers import Services, conversation_key, is_private
from bot.runtime import build_engine, load_and_swap
from model_store.convert import ConversionRequest, convert_async
from model_store.convert.extra import require_conversion_extra
from model_store.convert.heartbeat import format_elapsed
from model_store.errors import MissingDependencyError, ModelStoreError
from model_store.progress import Progress
from model_store.sources import PRECISIONS

log = logging.getLogger(__name__)

PROGRESS_EDIT_SECONDS = 3.0


class Commands:
    def __init__(self, services: Services) -> None:
        self.services = services

    def _admin(self, update: Update) -> bool:
        user = update.effective_user
        return self.services.access.is_admin(user.id if user else None)

    async def help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None:
            return
        await message.reply_text(texts.HELP + (texts.ADMIN_HELP if self._admin(update) else ""))

    async def reset(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or not self._may_use(update, message):
            return
        key = conversation_key(message)
        if self.services.engine is not None:
            self.services.engine.cancel(key)
            self.services.engine.forget(key)
        removed = await self.services.history.reset(key)
        log.info("chat %s reset (%d messages)", message.chat_id, removed)
        await message.reply_text(texts.RESET_DONE)

    async def stop(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or not self._may_use(update, message):
            return
        engine = self.services.engine
        stopped = engine is not None and engine.cancel(conversation_key(message))
        await message.reply_text(texts.STOPPING if stopped else texts.NOTHING_TO_STOP)

    async def stop_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or query.message is None or not isinstance(query.message, Message):
            return
        key = conversation_key(query.message)
        engine = self.services.engine
        asker = self.services.askers.get(engine.running_key(key) if engine is not None else key)
        if asker is not None and asker != query.from_user.id and not self._admin(update):
            await query.answer("Only the person who asked can stop this answer.")
            return
        stopped = engine is not None and engine.cancel(key)
        await query.answer(texts.STOPPING if stopped else texts.NOTHING_TO_STOP)

    async def model(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or not self._may_use(update, message):
            return
        engine = self.services.engine
        if engine is None:
            await message.reply_text(texts.NO_MODEL)
            return
        entry = engine.model.entry
        lines = [
            f"Model: {entry.source}" + (" (synthetic test model)" if entry.synthetic else ""),
            f"Precision: {entry.precision}",
            f"Device: {engine.model.device}",
            f"Queue: {engine.queue.running} answering, {engine.queue.waiting} waiting",
        ]
        await message.reply_text("\n".join(lines))

    async def stats(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None:
            return
        if not self._admin(update):
            await message.reply_text(texts.ADMINS_ONLY)
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

    def _may_use(self, update: Update, message: Message) -> bool:
        user = update.effective_user
        return self.services.access.may_ask(user.id if user else None, message.chat_id)

    # --- conversion ----------------------------------------------------------------------------------------

    async def convert(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None:
            return
        user = update.effective_user
        if not self._admin(update):
            log.info("refused /convert from user %s in chat %s", user.id if user else None, message.chat_id)
            await message.reply_text(texts.ADMINS_ONLY)
            return
        if self.services.conversion is not None and not self.services.conversion.done():
            await message.reply_text("A conversion is already running; its message shows the progress.")
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
        status = await message.reply_text(f"🔧 Converting {model} to {precision}…", do_quote=not is_private(message))
        self.services.conversion = asyncio.create_task(self._convert(status, model, precision))

    async def _convert(self, status: Message, model: str, precision: str) -> None:
        """Runs as a task: progress is shown by editing one message every few seconds, whatever the pace."""
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

        request = ConversionRequest(
            source=model, store_root=str(settings.store_dir), precision=precision, activate=True, device=settings.device
        )
        reporter = asyncio.create_task(report())
        try:
            entry = await convert_async(request, lambda update: latest.__setitem__(slice(None), [update]))
            reporter.cancel()
            await show(f"{header}\nLoading the new model…")
            if self.services.engine is None:
                self.services.engine = await build_engine(settings)
            else:
                await load_and_swap(self.services.engine, settings, entry)
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
