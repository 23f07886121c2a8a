"""Slash commands and the Stop button: help, reset, stop, model info, persona and the admin's stats; and a hint
for a command the bot does not know.  /convert has its own module (bot/handlers/conversion.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from telegram import Message, Update
from telegram.ext import ContextTypes

from bot import texts
from bot.admission.access import Sender, sender_for
from bot.answers.read_ahead import prepare_soon
from bot.handlers.admins import for_admins, is_admin
from bot.history import ConversationKey
from bot.output.chat import conversation_key, is_private, reply, tell, unbutton
from bot.output.pace import Pacer
from bot.services import Services
from engine.engine import Engine, Serving

log = logging.getLogger(__name__)

PERSONA_MAX_CHARS = 1000  # a system prompt this long still leaves most of the context to the conversation


class Commands:
    """The gate (bot/handlers/gate.py) let the command in: its sender may use the bot here and is not asking too fast.
    Refusals beyond that (not an admin, not the asker) are said once in a while at most (bot/admission/refusals.py)."""

    def __init__(self, services: Services) -> None:
        self.services = services

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
        engine, admin = self.services.engine, is_admin(self.services, update)
        running = (_model_name(engine.serving, admin), engine.serving.device) if engine is not None else None
        await reply(message, texts.help_text(running, admin=admin))

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
        prepare_soon(self.services, key)
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
        name = _model_name(engine.serving, is_admin(self.services, update))
        queue = engine.queue if isinstance(engine, Engine) else None
        await reply(message, texts.model_shown(name, engine.serving, queue))

    async def stats(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        admitted = await for_admins(self.services, update)
        if admitted is None:
            return
        message, _ = admitted
        history = await self.services.history.stats()
        uptime = time.monotonic() - self.services.started_at
        engine = self.services.engine
        running = (engine.stats, engine.queue if isinstance(engine, Engine) else None) if engine is not None else None
        pacer = context.bot.rate_limiter
        skipped = pacer.skipped if isinstance(pacer, Pacer) else 0
        await reply(message, texts.stats_shown(uptime, running, self.services.refusals.counts, skipped, history))


def _command_argument(text: str) -> str:
    """What follows the command, its line breaks kept (``context.args`` splits it into words)."""
    parts = text.split(maxsplit=1)
    return parts[1].strip() if len(parts) == 2 else ""


def _model_name(serving: Serving, admin: bool) -> str:
    """A model converted from a directory is named by its path on the server, which only admins see."""
    path = Path(serving.source)
    return serving.source if admin or not path.is_absolute() else texts.from_a_directory(path.name)


async def unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """In a private chat only: in a group the command may be another bot's."""
    message = update.effective_message
    if message is not None and is_private(message):
        await tell(message, texts.UNKNOWN_COMMAND, pace="now_or_never")
