"""Messages that ask the model something, from the update to the question put: whether the message is meant
for the bot, who may ask, what is asked (text, photos, a PDF or a clip, or those of the message it replies
to), and the checks that refuse it with a friendly reply before anything is stored or queued.

A photo or album sent without a question in a private chat is kept and read by the model at once, so the
question typed next starts like a follow-up; its Describe button asks for a description instead.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from telegram import Message, Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot import texts
from bot.addressing import addressed, is_reaction, mentions, question_text
from bot.albums import AlbumCollector
from bot.answering import ask, storage_failed
from bot.asking import Asking
from bot.buttons import describe_keyboard, described
from bot.chat import conversation_key, is_private, reply
from bot.history import ConversationKey
from bot.intake import Attachment, IntakeError, MediaLimits, attachments_in, gather, unreadable
from bot.material import Material, ask_about, unseen_pages
from bot.pages import names_pages
from bot.services import Services
from engine.context_policy import estimate_tokens
from engine.conversation import Turn
from engine.engine import Engine
from engine.images import ImageRejected, PreparedImage, image_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Asked:
    """What a message (or an album) asks, before anything is downloaded."""

    first: Message  # the one with the caption or text, which the answer replies to
    user_id: int | None
    key: ConversationKey
    attachments: list[Attachment]
    text: str
    keep_for_later: bool  # a photo, PDF or clip sent alone in a private chat: kept for the question to come


async def may_ask_now(services: Services, message: Message, user_id: int | None) -> Engine | None:
    """The engine, if this user may put a question to it in this chat now; otherwise the reason is told."""
    if services.engine is None:
        await reply(message, texts.NO_MODEL)
        return None
    if user_id is not None and not services.access.is_admin(user_id) and not await services.limiter.allow(user_id):
        await reply(message, texts.TOO_FAST)
        return None
    return services.engine


class Questions:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.albums = AlbumCollector(self._answer)

    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or message.from_user is None or message.from_user.is_bot:
            return
        if message.media_group_id:
            self.albums.add(message)
            return
        await self._answer([message])

    async def _answer(self, messages: list[Message]) -> None:
        """One question (an album is several messages); refusals are answered and leave no trace in history."""
        first = next((m for m in messages if m.caption or m.text), messages[0])
        user_id = first.from_user.id if first.from_user else None
        if not self._for_the_bot(messages, first) or not await self._allowed(first, user_id):
            return
        asked = self._asked(messages, first, user_id)
        if isinstance(asked, str):
            await reply(first, asked)
            return
        engine = await may_ask_now(self.services, first, asked.user_id)
        if engine is None:
            return
        refusal = await self._refusal(asked, engine)
        if refusal is not None:
            await reply(first, refusal)
            return
        try:
            material = await gather(
                first.get_bot(),
                self.services.history,
                asked.attachments,
                asked.text,
                self._limits(engine),
                self.services.media,
            )
            prepared = await self.services.prepared_all(material.images)
        except (IntakeError, ImageRejected) as error:
            await reply(first, str(error))
            return
        if asked.keep_for_later:
            await self._keep(asked, engine, material, prepared)
            return
        question = Turn("user", material.told(asked.text or material.asks), tuple(prepared))
        await ask(self.services, Asking(first, asked.key, asked.user_id, question, material, first.message_id))

    def _for_the_bot(self, messages: list[Message], first: Message) -> bool:
        """In groups, messages that address the bot; never stickers and GIFs sent as reactions."""
        username = self.services.bot_username
        if not is_private(first) and not any(addressed(m, username) for m in messages):
            return False
        return not all(is_reaction(message) for message in messages)

    async def _allowed(self, first: Message, user_id: int | None) -> bool:
        if self.services.access.may_ask(user_id, first.chat_id):
            return True
        log.info("refused user %s in chat %s: not on the allowlist", user_id, first.chat_id)
        if is_private(first) or mentions(first, self.services.bot_username):
            await reply(first, texts.NOT_ALLOWED)
        return False

    def _asked(self, messages: list[Message], first: Message, user_id: int | None) -> _Asked | str:
        """What is asked, or why it cannot be."""
        kind = unreadable(messages)
        if kind is not None:  # answered without it, the model would make up what the file says
            return texts.unsupported(kind)
        attachments = [attachment for message in messages for attachment in attachments_in(message)]
        sent_alone = bool(attachments)  # the images came with these messages, not with a replied-to one
        if not attachments and first.reply_to_message is not None:
            attachments = attachments_in(first.reply_to_message)
        text = question_text(first, self.services.bot_username)
        if not attachments and not text:
            return texts.EMPTY
        key = conversation_key(first)
        keep_for_later = sent_alone and not text and is_private(first)
        if self.services.answers.busy(key) and not keep_for_later:
            return texts.STILL_ANSWERING
        return _Asked(first, user_id, key, attachments, text, keep_for_later)

    async def _refusal(self, asked: _Asked, engine: Engine) -> str | None:
        limit = self.services.settings.max_images_per_turn
        if len(asked.attachments) > limit:
            return f"I can look at up to {limit} images per question; you sent {len(asked.attachments)}."
        if not asked.attachments and names_pages(asked.text):  # the model would answer about pages it cannot see
            return unseen_pages(asked.text, (await self.services.view(engine, asked.key)).turns)
        if not asked.attachments and await self.services.image_gone(asked.key):  # or about a deleted photo
            return texts.IMAGE_GONE
        return None

    def _limits(self, engine: Engine) -> MediaLimits:
        """A PDF's pages or a clip's frames may take two thirds of the conversation's token budget, so the
        question stays in view, pinned, with room for the follow-ups about it (engine/context_policy.py)."""
        settings = self.services.settings
        per_image = image_tokens(1, 1, engine.model.num_crops)
        return MediaLimits(
            pdf_pages=settings.pdf_pages,
            video_frames=settings.video_frames,
            video_max_seconds=settings.video_max_seconds,
            num_crops=engine.model.num_crops,
            max_images=max(1, engine.history_tokens * 2 // 3 // per_image),
        )

    async def _keep(self, asked: _Asked, engine: Engine, material: Material, prepared: list[PreparedImage]) -> None:
        tokens = estimate_tokens(
            material.context, [image_tokens(i.width, i.height, engine.model.num_crops) for i in prepared]
        )
        try:
            await self.services.history.add_user_message(
                asked.key,
                material.context,
                images=material.images,
                telegram_message_id=asked.first.message_id,
                user_id=asked.user_id,
                tokens=tokens,
            )
        except sqlite3.Error as error:
            await storage_failed(asked.first, error)
            return
        kept = texts.kept(material.label) if material.label else texts.photos_kept(len(prepared))
        await reply(asked.first, kept, describe_keyboard(material.kind))
        self.services.prepare_soon(asked.key)

    async def describe_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The Describe button under a kept photo: a description is asked for, as if typed."""
        query = update.callback_query
        if query is None or not isinstance(query.message, Message):
            return
        message, user_id = query.message, query.from_user.id
        key = conversation_key(message)
        if not self.services.access.may_ask(user_id, message.chat_id):
            await query.answer(texts.NOT_ALLOWED)
            return
        if self.services.answers.busy(key):
            await query.answer(texts.STILL_ANSWERING)
            return
        await query.answer()
        if await may_ask_now(self.services, message, user_id) is None:
            return
        try:
            await message.edit_reply_markup(reply_markup=None)
        except TelegramError as error:
            log.info("could not remove the Describe button: %s", error)
        await ask(self.services, Asking(message, key, user_id, Turn("user", ask_about(described(query.data)))))
