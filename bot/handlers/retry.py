"""Another answer to the conversation's latest question, from its 🔁 button or /retry: the person who asked
and the bot's admins may ask for it once the answer is finished, and the new answer replaces the old one in
the history (a greedy model samples it from a new seed: engine/generation.py)."""

from __future__ import annotations

import logging

from telegram import Message, Update
from telegram.ext import ContextTypes

from bot import texts
from bot.admission.access import sender_for
from bot.answers.answering import answer, conversation_turn
from bot.answers.asking import Asking
from bot.history import Exchange
from bot.media.decoding import ImageRejected
from bot.media.material import Material
from bot.output.chat import conversation_key
from bot.services import Services
from engine.conversation import Turn

log = logging.getLogger(__name__)


class Retries:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def retry_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The 🔁 button under an answer (its data names the answer): only the latest answer of the conversation
        is answered again."""
        query = update.callback_query
        if query is None or not isinstance(query.message, Message) or not context.matches:
            return
        message, user_id = query.message, query.from_user.id
        exchange = await self._target(message, user_id, pressed=int(context.matches[0].group(1)))
        if isinstance(exchange, str):
            await self.services.refusals.answer(query, exchange)
            return
        await query.answer()
        await self._retry(message, user_id, exchange)

    async def retry_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/retry: the conversation's latest question is answered again."""
        message, sender = update.effective_message, sender_for(update)
        if message is None or sender is None:
            return
        exchange = await self._target(message, sender.id, pressed=None)
        if exchange == texts.RETRY_ASKER_ONLY:
            await self.services.refusals.say(message, sender.id, exchange)
            return
        if isinstance(exchange, str):
            await self.services.refusals.note(message, exchange)
            return
        await self._retry(message, sender.id, exchange)

    async def _target(self, message: Message, asker: int, pressed: int | None) -> Exchange | str:
        """The exchange to answer again, or why not.  ``pressed``: the answer whose button it was."""
        services = self.services
        key = conversation_key(message)
        if services.answers.busy(key):
            return texts.RETRY_RUNNING
        exchange = await services.history.last_exchange(key)
        if exchange is None:
            return texts.RETRY_KEPT if await services.history.awaits_question(key) else texts.NOTHING_TO_RETRY
        if pressed is not None and pressed != exchange.answer.id:
            return texts.ONLY_LATEST
        if exchange.question.user_id not in (None, asker) and not services.access.is_admin(asker):
            return texts.RETRY_ASKER_ONLY
        if exchange.question.images_pruned:
            return texts.IMAGE_GONE
        return exchange

    async def _retry(self, message: Message, asker: int, exchange: Exchange) -> None:
        key = conversation_key(message)
        async with conversation_turn(self.services, message, asker, key) as claimed:
            if claimed is None:
                return
            try:
                images = await self.services.images.all(exchange.question.images)
            except ImageRejected as error:
                await self.services.refusals.note(message, texts.refusal(error.reason, error.data))
                return
            question = Turn("user", exchange.question.text, tuple(images))
            material = Material.recalled(exchange.question.text)  # what the images are, for the status and the note
            await answer(self.services, Asking(message, key, asker, question, material, retried=exchange), claimed)
