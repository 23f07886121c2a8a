"""Slash commands and the Stop button: help, reset, stop, model info, and the admin's convert and stats; and a
hint for a command the bot does not know."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cachetools import TTLCache
from telegram import Message, Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot import texts
from bot.admission.access import Sender, sender_for
from bot.handlers.hub_lookup import WHOLE_LOOK_UP, look_up
from bot.history import ConversationKey
from bot.output.buttons import confirm_keyboard
from bot.output.chat import conversation_key, is_private, reply, tell, unbutton
from bot.output.pace import Pacer
from bot.running.runtime import build_engine, load_and_swap
from bot.services import Services
from model_store.convert import ConversionRequest, convert_async, pins
from model_store.convert.extra import require_conversion_extra
from model_store.errors import MissingDependencyError, ModelStoreError
from model_store.progress import Progress
from model_store.sources import PRECISIONS, parse_source
from model_store.store import ModelEntry, ModelStore

log = logging.getLogger(__name__)

PROGRESS_EDIT_SECONDS = 3.0
PERSONA_MAX_CHARS = 1000  # a system prompt this long still leaves most of the context to the conversation
CONFIRM_SECONDS = 15 * 60  # a question left unanswered longer is asked again: the repository may have changed


@dataclass(frozen=True)
class _Confirmation:
    """A conversion waiting for an admin to accept running the code of one pinned revision (reading the
    repositories its configuration names at theirs)."""

    pinned: pins.Pins
    precision: str
    chat_id: int  # the message that asks, and whose buttons answer
    message_id: int


class Commands:
    """The gate (bot/handlers/gate.py) let the command in: its sender may use the bot here and is not asking too fast.
    Refusals beyond that (not an admin, not the asker) are said once in a while at most (bot/admission/refusals.py)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._confirmations: TTLCache[str, _Confirmation] = TTLCache(maxsize=16, ttl=CONFIRM_SECONDS)

    def _admin(self, update: Update) -> bool:
        user = update.effective_user
        return self.services.access.is_admin(user.id if user else None)

    async def _for_admins(self, update: Update) -> tuple[Message, Sender] | None:
        message, sender = update.effective_message, sender_for(update)
        if message is None or sender is None:
            return None
        if not self.services.access.is_admin(sender.user_id):
            self.services.refusals.log(sender.id, message.chat_id, "an admin command from someone not an admin")
            await self.services.refusals.say(message, sender.id, texts.ADMINS_ONLY)
            return None
        return message, sender

    async def _administers(self, message: Message, sender: Sender) -> bool:
        """The bot's admins; in a private chat its user; in a group its Telegram administrators (an anonymous
        one writes as the group), asked of Telegram at most once a minute (bot/admission/access.py)."""
        if is_private(message) or self.services.access.is_admin(sender.user_id) or sender.group_admin:
            return True
        if sender.user_id is None:
            return False
        return await self.services.group_admins.administers(message.get_bot(), message.chat_id, sender.user_id)

    async def _may_stop(self, message: Message, sender: Sender, key: ConversationKey) -> bool:
        """The person who asked, the bot's admins and, in a group, its administrators may stop an answer."""
        answers = self.services.answers
        if answers.may_stop(key, sender.id, self.services.access.is_admin(sender.user_id)):
            return True
        return not is_private(message) and await self._administers(message, sender)

    async def help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None:
            return
        engine = self.services.engine
        running = (engine.model.entry.source, engine.model.device) if engine is not None else None
        if running is not None and not self._admin(update):
            running = (_model_name(engine.model.entry, admin=False), running[1])  # type: ignore[union-attr]
        await reply(message, texts.help_text(running, admin=self._admin(update)))

    async def reset(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message, sender = update.effective_message, sender_for(update)
        if message is None or sender is None:
            return
        if not await self._administers(message, sender):
            await self.services.refusals.say(message, sender.id, texts.GROUP_ADMINS_ONLY)
            return
        key = conversation_key(message)
        self.services.answers.stop(key)
        if self.services.engine is not None:
            self.services.engine.forget(key)
        history = self.services.history
        removed = await history.reset(key)
        log.info("chat %s reset (%d messages)", message.chat_id, removed)
        kept = await history.persona(key) is not None
        await reply(message, texts.RESET_DONE + (texts.PERSONA_KEPT if kept else ""))

    async def persona(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/persona shows the conversation's system prompt, /persona TEXT sets it, /persona reset returns it to
        SYSTEM_PROMPT.  The conversation itself stays: the model reads it anew after the new persona."""
        message, sender = update.effective_message, sender_for(update)
        if message is None or sender is None:
            return
        key = conversation_key(message)
        history = self.services.history
        text = _command_argument(message.text or "")
        if not text:
            await reply(message, texts.persona_shown(await history.persona(key), self.services.settings.system_prompt))
            return
        if not await self._administers(message, sender):
            await self.services.refusals.say(message, sender.id, texts.PERSONA_ADMINS_ONLY)
            return
        if len(text) > PERSONA_MAX_CHARS:
            await reply(message, texts.persona_too_long(len(text), PERSONA_MAX_CHARS))
            return
        reset = text.lower() == "reset"
        await history.set_persona(key, None if reset else text)
        log.info("chat %s: persona %s", message.chat_id, "reset" if reset else f"set ({len(text)} characters)")
        self.services.prepare_soon(key)
        await reply(message, texts.PERSONA_RESET if reset else texts.PERSONA_SET)

    async def stop(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Stops the sender's answer being written, or else withdraws their question waiting behind another
        member's.  Its acknowledgement goes before anything waiting for the chat's rate limit (bot/output/pace.py): the
        person is waiting for it."""
        message, sender = update.effective_message, sender_for(update)
        if message is None or sender is None:
            return
        key = conversation_key(message)
        answers = self.services.answers
        if answers.asker(key) != sender.id and answers.withdraw(key, sender.id):
            await tell(message, texts.STOPPING, pace="first")
            return
        if not await self._may_stop(message, sender, key):
            await self.services.refusals.say(message, sender.id, texts.ASKER_ONLY)
            return
        if answers.stop(key):
            await tell(message, texts.STOPPING, pace="first")
        else:
            await self.services.refusals.say(message, sender.id, texts.NOTHING_TO_STOP)

    async def stop_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The Stop button names its answer: it stops that one, never another answer the chat runs later."""
        query, sender = update.callback_query, sender_for(update)
        if query is None or not isinstance(query.message, Message) or sender is None or not context.matches:
            return
        message, answer_id = query.message, int(context.matches[0].group(1))
        key = conversation_key(message)
        answers = self.services.answers
        if answers.answer_id(key) != answer_id:  # its answer is no longer being written
            await self.services.refusals.answer(query, texts.BUTTON_EXPIRED)
            await unbutton(message.get_bot(), message.chat_id, message.message_id)
            return
        if not await self._may_stop(message, sender, key):
            await self.services.refusals.answer(query, texts.ASKER_ONLY)
            return
        answers.stop(key, answer_id=answer_id)
        await self.services.refusals.answer(query, texts.STOPPING)

    async def model(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None:
            return
        engine = self.services.engine
        if engine is None:
            await reply(message, texts.NO_MODEL)
            return
        entry = engine.model.entry
        name = _model_name(entry, self._admin(update))
        await reply(message, texts.model_shown(name, entry, engine.model.device, engine.queue))

    async def stats(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        admitted = await self._for_admins(update)
        if admitted is None:
            return
        message, _ = admitted
        history = await self.services.history.stats()
        uptime = time.monotonic() - self.services.started_at
        engine = self.services.engine
        running = (engine.stats, engine.queue) if engine is not None else None
        pacer = context.bot.rate_limiter
        skipped = pacer.skipped if isinstance(pacer, Pacer) else 0
        await reply(message, texts.stats_shown(uptime, running, self.services.refusals.counts, skipped, history))

    # --- conversion ----------------------------------------------------------------------------------------

    async def convert(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        admitted = await self._for_admins(update)
        if admitted is None:
            return
        message, _ = admitted
        if self._converting():
            await message.reply_text(texts.CONVERSION_RUNNING)
            return
        try:
            require_conversion_extra()
        except MissingDependencyError as error:
            await message.reply_text(texts.store_failed(error.reason, error.data))
            return
        settings = self.services.settings
        args = list(context.args or [])
        precision = settings.precision
        if args and args[-1].lower() in PRECISIONS:
            precision = args.pop().lower()
        model = args[0] if args else settings.model
        try:
            source = parse_source(model)
            if not source.vouched_for:  # its code would run here: the admin sees which revisions and confirms
                found = await look_up(source, settings, self.services.stopping)
                if found is not None:  # else the bot is stopping
                    await self._ask_to_trust(message, found, precision)
                return
        except TimeoutError:
            await message.reply_text(texts.hub_too_slow(WHOLE_LOOK_UP * settings.hub_timeout_seconds))
            return
        except ModelStoreError as error:
            await message.reply_text(texts.store_failed(error.reason, error.data))
            return
        status = await message.reply_text(texts.converting(model, precision), do_quote=not is_private(message))
        self.services.conversion = asyncio.create_task(self._convert(status, model, precision))

    def _converting(self) -> bool:
        return self.services.conversion is not None and not self.services.conversion.done()

    async def _ask_to_trust(self, message: Message, found: pins.Pins, precision: str) -> None:
        """The question names its ticket, and the ticket the message that asks it: a press counts only there."""
        assert found.checkpoint is not None
        ticket = secrets.token_urlsafe(8)
        repo_id, revision = found.checkpoint.repo_id, found.checkpoint.revision
        asked = await message.reply_text(
            texts.trust_remote_code(repo_id, revision, list(found.named_revisions.items())),
            reply_markup=confirm_keyboard(ticket, repo_id, revision),
            do_quote=not is_private(message),
            disable_web_page_preview=True,
        )
        self._confirmations[ticket] = _Confirmation(found, precision, asked.chat_id, asked.message_id)

    async def confirm_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """An admin's answer to whether a repository's code may run; the question's message then shows the
        conversion's progress."""
        query = update.callback_query
        if query is None or not isinstance(query.message, Message) or not context.matches:
            return
        if not self._admin(update):
            await self.services.refusals.answer(query, texts.ADMINS_ONLY)
            return
        choice, ticket = context.matches[0].group(1), context.matches[0].group(2)
        confirmation = self._confirmations.get(ticket)
        if confirmation is None or (confirmation.chat_id, confirmation.message_id) != (
            query.message.chat_id,
            query.message.message_id,
        ):
            confirmation = None  # unknown, expired, or another message's ticket: this message's question expired
        else:
            del self._confirmations[ticket]
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
        found = confirmation.pinned
        assert found.checkpoint is not None
        log.info("admin %s confirmed running the code of %s", query.from_user.id, found.revisions)
        model = f"{found.checkpoint.repo_id}@{found.checkpoint.revision[:12]}"
        await query.message.edit_text(texts.converting(model, confirmation.precision))
        self.services.conversion = asyncio.create_task(
            self._convert(query.message, model, confirmation.precision, confirmed=found)
        )

    async def _convert(self, status: Message, model: str, precision: str, confirmed: pins.Pins | None = None) -> None:
        """Runs as a task: progress is shown by editing one message every few seconds, whatever the pace.
        ``confirmed``: the revisions the admin agreed to run the code of (and to read), and only those."""
        settings = self.services.settings
        started = time.monotonic()
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
                    await show(texts.converting(model, precision, shown))

        # Chosen for the next start (active.json) only once it has loaded here, so a model that fails to load
        # is not the one a restart loads.
        pinned = confirmed.checkpoint if confirmed else None
        request = ConversionRequest(
            source=pinned.repo_id if pinned else model,
            store_root=str(settings.store_dir),
            precision=precision,
            activate=False,
            device=settings.device,
            revision=pinned.revision if pinned else None,
            trust_remote_code=confirmed is not None,
            named_revisions=confirmed.named_revisions if confirmed else {},
            hf_token=settings.hub_token,
            hub_timeout=settings.hub_timeout_seconds,
        )
        reporter = asyncio.create_task(report())
        try:
            entry = await convert_async(request, lambda update: latest.__setitem__(slice(None), [update]))
            reporter.cancel()
            await show(texts.converting(model, precision, loading=True))
            if self.services.engine is None:
                self.services.engine = await build_engine(settings, entry)
            else:
                await load_and_swap(self.services.engine, settings, entry)
            ModelStore(settings.store_dir).set_active(entry)
            if settings.warm_up_hours > 0:  # the new model has read nothing yet
                self.services.warm_up(time.time() - settings.warm_up_hours * 3600)
        except ModelStoreError as error:
            await show(texts.store_failed(error.reason, error.data))
            return
        except Exception as error:
            log.exception("conversion or loading failed")
            await show(texts.not_loaded(str(error)))
            return
        finally:
            reporter.cancel()
        await show(texts.now_serving(entry, time.monotonic() - started))


def _command_argument(text: str) -> str:
    """What follows the command, its line breaks kept (``context.args`` splits it into words)."""
    parts = text.split(maxsplit=1)
    return parts[1].strip() if len(parts) == 2 else ""


def _model_name(entry: ModelEntry, admin: bool) -> str:
    """A model converted from a directory is named by its path on this server, which only admins see."""
    path = Path(entry.source)
    return entry.source if admin or not path.is_absolute() else texts.from_a_directory(path.name)


async def unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """In a private chat only: in a group the command may be another bot's."""
    message = update.effective_message
    if message is not None and is_private(message):
        await tell(message, texts.UNKNOWN_COMMAND, pace="now_or_never")
