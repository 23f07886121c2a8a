"""Messages that ask the model something, from the update to the question put: whether the message is meant
for the bot, who may ask, what is asked (text, photos, a PDF or a clip, or those of the message it replies
to; or a recording, heard by the speech model as the question), and the checks that refuse it with a friendly
reply before anything is stored or queued.

A voice message or an audio file asks what it says, about the photos in view: those of the message it replies
to, or the conversation's.

A photo or album sent without a question in a private chat is kept and read by the model at once, so the
question typed next starts like a follow-up; its Describe button asks for a description instead.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, replace
from typing import cast

from telegram import Message, Update
from telegram.ext import ContextTypes

from bot import texts
from bot.admission.access import Sender, sender_of
from bot.admission.addressing import addressed, is_reaction, question_text
from bot.answers.answering import answer, conversation_turn, storage_failed
from bot.answers.asking import Asking
from bot.answers.context_view import image_gone, model_view
from bot.handlers.albums import AlbumCollector
from bot.history import ConversationKey
from bot.media.decoding import ImageRejected
from bot.media.intake import (
    Attachment,
    IntakeError,
    MediaLimits,
    attachments_in,
    gather,
    listen_to,
    recording_in,
    unreadable,
)
from bot.media.material import Kind, Material, ask_about, unseen_pages
from bot.media.pages import names_pages
from bot.media.sound import Sound
from bot.output.buttons import describe_keyboard
from bot.output.chat import conversation_key, is_private, tell, unbutton
from bot.services import Services
from engine.backend import Backend
from engine.context_policy import estimate_tokens
from engine.conversation import Turn
from engine.images import PreparedImage, image_tokens
from engine.pipeline_protocol import Speech
from engine.remote_engine import RemoteEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Asked:
    """What a message (or an album) asks, before anything is downloaded."""

    first: Message  # the one with the caption or text, which the answer replies to
    sender: Sender
    key: ConversationKey
    attachments: list[Attachment]
    text: str
    keep_for_later: bool  # a photo, PDF or clip sent alone in a private chat: kept for the question to come
    recording: Attachment | None = None  # a voice message or an audio file: what it says is the question


class Questions:
    """The gate (bot/handlers/gate.py) has let the message in: its sender may use the bot here and is not asking too
    fast.  Every other refusal is said once in a while at most (bot/admission/refusals.py) and costs no wait."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.albums = AlbumCollector(self._answer, services.background.start)

    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or sender_of(message) is None:
            return
        if message.media_group_id:
            self.albums.add(message, update)
            return
        await self._answer([message])

    async def _answer(self, messages: list[Message]) -> None:
        """One question (an album is several messages); refusals are answered and leave no trace in history."""
        first = next((m for m in messages if m.caption or m.text), messages[0])
        sender = sender_of(first)
        if sender is None or not self._for_the_bot(messages, first):
            return
        asked = self._asked(messages, first, sender)
        if isinstance(asked, str):
            await self.services.refusals.note(first, asked)
            return
        engine = self.services.engine
        refusal = await self._refusal(asked, engine) if engine is not None else None
        if refusal is not None:
            await self.services.refusals.note(first, refusal)
            return
        keeping = asked.keep_for_later
        async with conversation_turn(self.services, first, sender.id, asked.key, keeping=keeping) as claimed:
            if claimed is None or self.services.engine is None:
                return
            engine = self.services.engine
            try:
                read = await claimed.read(self._read(asked, engine))
            except (IntakeError, ImageRejected) as error:
                await self.services.refusals.note(first, texts.refusal(error.reason, error.data))
                return
            if read is None:  # stopped while its files were read
                return
            material, prepared, sound = read
            if not asked.attachments and await image_gone(self.services.history, asked.key):
                material = replace(material, gone=True)  # answered as the model can, and told to send it again
            if keeping:
                claimed.answered = await self._keep(asked, engine, material, prepared)
                return
            speech = Speech(sound.samples) if sound is not None else None
            typed = asked.text or ("" if speech is not None else material.asks)  # a recording says its question
            question = Turn("user", material.told(typed), tuple(prepared))
            asking = Asking(first, asked.key, sender.id, question, material, first.message_id, speech=speech)
            await answer(self.services, asking, claimed)

    async def _read(self, asked: _Asked, engine: Backend) -> tuple[Material, list[PreparedImage], Sound | None]:
        """The question's files, downloaded and read, one file of a person's at a time (bot/media/reader.py);
        raises IntakeError or ImageRejected."""
        services = self.services
        async with services.media.for_person(asked.sender.id):
            bot = asked.first.get_bot()
            sound = None
            if asked.recording is not None:
                limit = services.settings.voice_max_seconds
                sound = await listen_to(bot, asked.recording, services.media, max_seconds=limit)
            limits = self._limits(engine)
            material = await gather(bot, services.history, asked.attachments, asked.text, limits, services.media)
            return material, await services.images.all(material.images), sound

    def _for_the_bot(self, messages: list[Message], first: Message) -> bool:
        """In groups, an album whose part addressing the bot has come (the gate, bot/handlers/gate.py, let each
        part through and decided for single messages); never stickers and GIFs sent as reactions."""
        username = self.services.bot_username
        if first.media_group_id and not is_private(first) and not any(addressed(m, username) for m in messages):
            return False
        return not all(is_reaction(message) for message in messages)

    def _asked(self, messages: list[Message], first: Message, sender: Sender) -> _Asked | str:
        """What is asked, or why it cannot be."""
        kind = unreadable(messages)
        if kind is not None:  # answered without it, the model would make up what the file says
            return texts.unsupported(kind)
        attachments = [attachment for message in messages for attachment in attachments_in(message)]
        recordings = [recording for message in messages if (recording := recording_in(message)) is not None]
        if len(recordings) > 1 or (recordings and attachments):
            return texts.refusal("one_at_a_time", {"name": recordings[0].name})
        sent_alone = bool(attachments)  # the images came with these messages, not with a replied-to one
        replied = first.reply_to_message
        if not attachments and replied is not None:
            attachments = attachments_in(replied)
            if not attachments and not recordings and (recording := recording_in(replied)) is not None:
                recordings = [recording]  # a question typed in reply to a recording asks about what it says
        text = question_text(first, self.services.bot_username)
        if not attachments and not text and not recordings:
            return texts.EMPTY
        keep_for_later = sent_alone and not text and is_private(first)
        recording = recordings[0] if recordings else None
        return _Asked(first, sender, conversation_key(first), attachments, text, keep_for_later, recording)

    async def _refusal(self, asked: _Asked, engine: Backend) -> str | None:
        if asked.recording is not None and not engine.hears:
            return texts.NO_SPEECH_HERE if isinstance(engine, RemoteEngine) else texts.NO_SPEECH_MODEL
        limit = self.services.settings.max_images_per_turn
        if len(asked.attachments) > limit:
            return texts.too_many_images(limit, len(asked.attachments))
        if not asked.attachments and names_pages(asked.text):  # the model would answer about pages it cannot see
            return unseen_pages(asked.text, (await model_view(self.services, engine, asked.key)).turns)
        return None

    def _limits(self, engine: Backend) -> MediaLimits:
        """A PDF's pages or a clip's frames may take two thirds of the conversation's token budget, so the
        question stays in view, pinned, with room for the follow-ups about it (engine/context_policy.py)."""
        settings = self.services.settings
        per_image = image_tokens(1, 1, engine.num_crops)
        return MediaLimits(
            pdf_pages=settings.pdf_pages,
            video_frames=settings.video_frames,
            video_max_seconds=settings.video_max_seconds,
            num_crops=engine.num_crops,
            max_images=max(1, engine.history_tokens * 2 // 3 // per_image),
        )

    async def _keep(self, asked: _Asked, engine: Backend, material: Material, prepared: list[PreparedImage]) -> bool:
        """Stored for the question to come, and read by the model right away (once the claim is released);
        False when it could not be stored."""
        tokens = estimate_tokens(
            material.context, [image_tokens(i.width, i.height, engine.num_crops) for i in prepared]
        )
        try:
            await self.services.history.add_user_message(
                asked.key,
                material.context,
                images=material.images,
                telegram_message_id=asked.first.message_id,
                user_id=asked.sender.id,
                tokens=tokens,
            )
        except sqlite3.Error as error:
            await storage_failed(self.services, asked.first, error)
            return False
        kept = texts.kept(material.label) if material.label else texts.photos_kept(len(prepared))
        await tell(asked.first, kept, describe_keyboard(material.kind, asked.first.message_id))
        return True

    async def describe_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The Describe button under a kept photo, PDF or clip: a description of it is asked for, as if typed,
        while it is still the one in view (a later photo makes the button expire)."""
        query = update.callback_query
        if query is None or not isinstance(query.message, Message) or not context.matches:
            return
        message, user_id = query.message, query.from_user.id
        kind, kept = cast(Kind, context.matches[0].group(1)), int(context.matches[0].group(2))
        key = conversation_key(message)
        if kept not in (await self.services.history.latest_images_message(key) or ()):
            await self.services.refusals.answer(query, texts.BUTTON_EXPIRED)
            await unbutton(message.get_bot(), message.chat_id, message.message_id)
            return
        if self.services.answers.busy(key):
            await self.services.refusals.answer(query, texts.STILL_ANSWERING)
            return
        await query.answer()
        async with conversation_turn(self.services, message, user_id, key) as claimed:
            if claimed is None:
                return
            await unbutton(message.get_bot(), message.chat_id, message.message_id)
            await answer(self.services, Asking(message, key, user_id, Turn("user", ask_about(kind))), claimed)
