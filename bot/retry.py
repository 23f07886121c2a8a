"""Another answer to the conversation's latest question, from its 🔁 button or /retry: the person who asked
and the bot's admins may ask for it once the answer is finished, and the new answer replaces the old one in
the history (a greedy model samples it from a new seed: engine/generation.py)."""

from __future__ import annotations

import logging

from telegram import Message, Update
from telegram.ext import ContextTypes

from bot import texts
from bot.answering import ask
from bot.asking import Asking
from bot.chat import conversation_key, is_private, reply
from bot.history import Exchange
from bot.material import Material
from bot.questions import may_ask_now
from bot.services import Services
from engine.conversation import Turn
from engine.images import ImageRejected

log = logging.getLogger(__name__)


class Retries:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def retry_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The 🔁 button under an answer: only the latest answer of the conversation is answered again."""
        query = update.callback_query
        if query is None or not isinstance(query.message, Message):
            return
        message, user_id = query.message, query.from_user.id
        if not self.services.access.may_ask(user_id, message.chat_id):
            await query.answer(texts.NOT_ALLOWED)
            return
        exchange = await self._target(message, user_id, pressed=message.message_id)
        if isinstance(exchange, str):
            await query.answer(exchange)
            return
        await query.answer()
        await self._retry(message, user_id, exchange)

    async def retry_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/retry: the conversation's latest question is answered again."""
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        if not self.services.access.may_ask(user.id, message.chat_id):
            log.info("refused /retry from user %s in chat %s: not on the allowlist", user.id, message.chat_id)
            if is_private(message):
                await reply(message, texts.NOT_ALLOWED)
            return
        exchange = await self._target(message, user.id, pressed=None)
        if isinstance(exchange, str):
            await reply(message, exchange)
            return
        await self._retry(message, user.id, exchange)

    async def _target(self, message: Message, user_id: int, pressed: int | None) -> Exchange | str:
        """The exchange to answer again, or why not.  ``pressed``: the answer message whose button it was."""
        services = self.services
        key = conversation_key(message)
        if services.answers.busy(key):
            return texts.RETRY_RUNNING
        exchange = await services.history.last_exchange(key)
        if exchange is None:
            return texts.NOTHING_TO_RETRY
        if pressed is not None and pressed not in exchange.answer.telegram_message_ids:
            return texts.ONLY_LATEST
        if exchange.question.user_id not in (None, user_id) and not services.access.is_admin(user_id):
            return texts.RETRY_ASKER_ONLY
        if exchange.question.images_pruned:
            return texts.IMAGE_GONE
        return exchange

    async def _retry(self, message: Message, user_id: int, exchange: Exchange) -> None:
        if await may_ask_now(self.services, message, user_id) is None:
            return
        try:
            images = await self.services.prepared_all(exchange.question.images)
        except ImageRejected as error:
            await reply(message, str(error))
            return
        question = Turn("user", exchange.question.text, tuple(images))
        material = Material.recalled(exchange.question.text)  # what the images are, for the status and the note
        await ask(
            self.services, Asking(message, conversation_key(message), user_id, question, material, retried=exchange)
        )
