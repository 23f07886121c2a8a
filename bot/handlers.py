"""Telegram updates to engine requests, and streamed answers back: the bot's behaviour lives here.

The flow for a question: access and rate checks, images fetched once and prepared, the engine asked (which
fails fast when the chat is already being answered or the line is full), then the question is stored, a
placeholder shown, and the answer streamed into it and stored when it ends.  Nothing is written to the
history for a question that was refused.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ChatType, MessageEntityType
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot import texts
from bot.access import AccessPolicy, UserRateLimiter
from bot.albums import AlbumCollector
from bot.context_view import View, conversation_view
from bot.history import ConversationKey, Exchange, HistoryStore
from bot.image_cache import PreparedImageCache
from bot.intake import IntakeError, MediaLimits, attachments_in, gather, unreadable
from bot.material import Kind, Material, ask_about, unseen_pages
from bot.media_reader import MediaReader
from bot.pages import names_pages
from bot.recovery import AnswerRecord
from bot.reply_stream import Drafts, Postponed, ReplyStream, Undeliverable
from bot.settings import Settings
from engine.context_policy import estimate_tokens
from engine.conversation import Turn
from engine.engine import Chunk, Engine, Event, Finished, Started, Waiting
from engine.fair_queue import AlreadyQueued, QueueFull
from engine.images import ImageRejected, PreparedImage, image_tokens

log = logging.getLogger(__name__)

# The Describe button's data under what was kept, the one place both directions are read from.
DESCRIBE_CALLBACKS: dict[Kind, str] = {"image": "describe", "pdf": "describe pdf", "clip": "describe clip"}
RETRY_CALLBACK = "retry"
# Upgrades announced in one chat and still waiting for the announcement in the other; the oldest are dropped.
MIGRATIONS_PENDING = 64


def conversation_key(message: Message) -> ConversationKey:
    thread = message.message_thread_id if message.is_topic_message and message.message_thread_id else 0
    return ConversationKey(message.chat_id, thread)


def is_private(message: Message) -> bool:
    return message.chat.type == ChatType.PRIVATE


@dataclass(frozen=True)
class Asking:
    """One question on its way to the model: where it was asked, by whom, and what it shows."""

    message: Message  # the answer replies to it
    key: ConversationKey
    user_id: int | None
    question: Turn
    material: Material = field(default_factory=Material)  # images new to the history, and what they are
    telegram_message_id: int | None = None  # the question's own message, if it is one
    retried: Exchange | None = None  # the exchange answered again; its answer is replaced


def retry_keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(texts.RETRY_BUTTON, callback_data=RETRY_CALLBACK)]])


@dataclass
class Services:
    """What the handlers need, created at start-up (the engine may arrive later, after /convert)."""

    settings: Settings
    history: HistoryStore
    access: AccessPolicy
    limiter: UserRateLimiter
    engine: Engine | None = None
    bot_username: str = ""
    started_at: float = field(default_factory=time.monotonic)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set at shutdown (bot/app.py)
    conversion: asyncio.Task[None] | None = None
    askers: dict[ConversationKey, int] = field(default_factory=dict)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    images: PreparedImageCache = field(init=False)
    media: MediaReader = field(init=False)  # reads PDFs and clips in a child process (bot/media_reader.py)
    drafts: Drafts = field(init=False)  # whether private chats' answers stream as drafts (bot/reply_stream.py)

    def __post_init__(self) -> None:
        self.images = PreparedImageCache(self.settings.prepared_images_mb * 1024 * 1024)
        self.media = MediaReader()
        self.drafts = Drafts(self.settings.stream_drafts, self.settings.draft_interval_seconds)

    def prepared(self, data: bytes, sha256: str) -> PreparedImage:
        return self.images.get(data, sha256)

    async def view(self, engine: Engine, key: ConversationKey, before: int | None = None) -> View:
        """What the model sees of the conversation before its next question, or before message ``before``
        (bot/context_view.py)."""
        return await conversation_view(
            self.history,
            key,
            budget=engine.history_tokens,
            system_prompt=self.settings.system_prompt,
            num_crops=engine.model.num_crops,
            prepare=self.prepared,
            before=before,
        )

    def prepare_soon(self, key: ConversationKey) -> None:
        """Have the model read the conversation now, ahead of its next question, unless a question of it is
        already in line (which reads it anyway)."""
        engine = self.engine
        if engine is not None and not engine.is_busy(key):
            self._in_background(self._prepare(engine, key))

    async def _prepare(self, engine: Engine, key: ConversationKey) -> None:
        try:
            view = await self.view(engine, key)
            await engine.prepare(key, view.turns, system_prompt=view.system_prompt)
        except Exception:
            log.exception("could not prepare the conversation in chat %s", key.chat_id)

    def warm_up(self, since: float) -> None:
        """After a start: the conversations active since ``since`` (a Unix time) are read again, the most
        recent first, one after another, as long as they fit in the KV cache together."""
        engine = self.engine
        if engine is not None:
            self._in_background(self._warm_up(engine, since))

    async def _warm_up(self, engine: Engine, since: float) -> None:
        room = engine.kv_cache_tokens * 3 // 4  # the rest for the questions that come meanwhile
        for key in await self.history.recent_conversations(since):
            view = await self.view(engine, key)
            room -= view.tokens
            if room < 0:
                break
            prepared = await engine.prepare(key, view.turns, system_prompt=view.system_prompt)
            log.info("warmed up chat %s in %.1f s (%d pieces)", key.chat_id, prepared.seconds, prepared.pieces)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


class Handlers:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.albums = AlbumCollector(self._answer)
        self._migrations: OrderedDict[tuple[int, int], str] = OrderedDict()

    # --- addressing ----------------------------------------------------------------------------------------

    def _mentions_bot(self, message: Message) -> bool:
        username = self.services.bot_username.lower()
        text = message.text or message.caption or ""
        entities = message.entities or message.caption_entities or ()
        for entity in entities:
            if entity.type == MessageEntityType.MENTION:
                mention = text.encode("utf-16-le")[entity.offset * 2 : (entity.offset + entity.length) * 2]
                if mention.decode("utf-16-le").lower() == f"@{username}":
                    return True
        return False

    def _addressed(self, message: Message) -> bool:
        """In groups: only mentions, replies to the bot and commands (commands have their own handlers)."""
        if is_private(message):
            return True
        reply = message.reply_to_message
        if reply is not None and reply.from_user is not None and reply.from_user.username == self.services.bot_username:
            return True
        return self._mentions_bot(message)

    def _question_text(self, message: Message) -> str:
        text = message.text or message.caption or ""
        if self.services.bot_username:
            for variant in (f"@{self.services.bot_username}", f"@{self.services.bot_username.lower()}"):
                text = text.replace(variant, " ")
        return " ".join(text.split()) if text.strip() else ""

    # --- messages ------------------------------------------------------------------------------------------

    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or message.from_user is None or message.from_user.is_bot:
            return
        if message.media_group_id:
            self.albums.add(message)
            return
        if not self._addressed(message):
            return
        await self._answer([message])

    async def on_migration(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Telegram announces a group's upgrade in both chats: ``migrate_to_chat_id`` in the old group and
        ``migrate_from_chat_id`` in the new supergroup.  History and access follow the new id only once both
        announcements of the same pair have arrived, and only for a chat the bot knows, so a single forged
        update moves nothing."""
        message = update.effective_message
        if message is None:
            return
        if message.migrate_to_chat_id:
            pair, half = (message.chat_id, message.migrate_to_chat_id), "to"
        elif message.migrate_from_chat_id:
            pair, half = (message.migrate_from_chat_id, message.chat_id), "from"
        else:
            return
        if self._migrations.get(pair, half) == half:  # the first of the two, or the same one again
            self._migrations[pair] = half
            while len(self._migrations) > MIGRATIONS_PENDING:
                self._migrations.popitem(last=False)
            return
        del self._migrations[pair]
        old, new = pair
        services = self.services
        if old not in services.access.chats and not await services.history.has_chat(old):
            log.info("group %s became supergroup %s; nothing of it is known here", old, new)
            return
        moved = await services.history.move_chat(old, new)
        services.access.follow_migration(old, new)
        engine = services.engine
        if engine is not None:
            for key in [key for key in services.askers if key.chat_id == old]:  # answers running right now
                engine.follow_move(key, replace(key, chat_id=new))
        log.info("group %s became supergroup %s; %d conversations moved", old, new, moved)

    async def _reply(self, message: Message, text: str, markup: InlineKeyboardMarkup | None = None) -> None:
        try:
            await message.reply_text(text, do_quote=not is_private(message), reply_markup=markup)
        except TelegramError as error:
            log.info("could not reply in chat %s: %s", message.chat_id, error)

    async def _may_ask_now(self, message: Message, user_id: int | None) -> Engine | None:
        """The engine, if this user may put a question to it in this chat now; otherwise the reason is told."""
        services = self.services
        if services.engine is None:
            await self._reply(message, texts.NO_MODEL)
            return None
        if user_id is not None and not services.access.is_admin(user_id) and not await services.limiter.allow(user_id):
            await self._reply(message, texts.TOO_FAST)
            return None
        return services.engine

    async def _answer(self, messages: list[Message]) -> None:
        """One question (an album is several messages); refusals are answered and leave no trace in history.

        A photo or album sent without a question in a private chat is kept and read by the model at once, so
        the question typed next starts like a follow-up; a Describe button asks for a description instead.
        """
        services = self.services
        first = next((m for m in messages if m.caption or m.text), messages[0])
        if not is_private(first) and not any(self._addressed(m) for m in messages):
            return
        if all(_is_reaction(message) for message in messages):
            return
        user = first.from_user
        user_id = user.id if user else None
        if not services.access.may_ask(user_id, first.chat_id):
            log.info("refused user %s in chat %s: not on the allowlist", user_id, first.chat_id)
            if is_private(first) or self._mentions_bot(first):
                await self._reply(first, texts.NOT_ALLOWED)
            return
        kind = unreadable(messages)
        if kind is not None:  # answered without it, the model would make up what the file says
            await self._reply(first, texts.unsupported(kind))
            return
        attachments = [attachment for message in messages for attachment in attachments_in(message)]
        sent_alone = bool(attachments)  # the images came with these messages, not with a replied-to one
        if not attachments and first.reply_to_message is not None:
            attachments = attachments_in(first.reply_to_message)
        text = self._question_text(first)
        if not attachments and not text:
            await self._reply(first, texts.EMPTY)
            return
        key = conversation_key(first)
        keep_for_later = sent_alone and not text and is_private(first)
        engine = services.engine
        if engine is not None and engine.is_busy(key) and not keep_for_later:
            await self._reply(first, texts.STILL_ANSWERING)
            return
        engine = await self._may_ask_now(first, user_id)
        if engine is None:
            return
        if len(attachments) > services.settings.max_images_per_turn:
            limit = services.settings.max_images_per_turn
            await self._reply(first, f"I can look at up to {limit} images per question; you sent {len(attachments)}.")
            return
        if not attachments and names_pages(text):
            unseen = unseen_pages(text, (await services.view(engine, key)).turns)
            if unseen is not None:  # the model would answer about pages it cannot see
                await self._reply(first, unseen)
                return
        try:
            limits = self._limits(engine)
            material = await gather(first.get_bot(), services.history, attachments, text, limits, services.media)
            prepared = [await asyncio.to_thread(services.prepared, i.data, i.sha256) for i in material.images]
        except (IntakeError, ImageRejected) as error:
            await self._reply(first, str(error))
            return
        if keep_for_later:
            await self._keep(first, key, user_id, engine, material, prepared)
            return
        question = Turn("user", material.told(text or material.asks), tuple(prepared))
        await self._ask(Asking(first, key, user_id, question, material, first.message_id))

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

    async def _keep(
        self,
        message: Message,
        key: ConversationKey,
        user_id: int | None,
        engine: Engine,
        material: Material,
        prepared: list[PreparedImage],
    ) -> None:
        tokens = estimate_tokens(
            material.context, [image_tokens(i.width, i.height, engine.model.num_crops) for i in prepared]
        )
        try:
            await self.services.history.add_user_message(
                key,
                material.context,
                images=material.images,
                telegram_message_id=message.message_id,
                user_id=user_id,
                tokens=tokens,
            )
        except sqlite3.Error as error:
            await self._storage_failed(message, error)
            return
        button = InlineKeyboardButton(texts.DESCRIBE_BUTTON, callback_data=DESCRIBE_CALLBACKS[material.kind])
        kept = texts.kept(material.label) if material.label else texts.photos_kept(len(prepared))
        await self._reply(message, kept, InlineKeyboardMarkup([[button]]))
        self.services.prepare_soon(key)

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
        engine = self.services.engine
        if engine is not None and engine.is_busy(key):
            await query.answer(texts.STILL_ANSWERING)
            return
        await query.answer()
        engine = await self._may_ask_now(message, user_id)
        if engine is None:
            return
        try:
            await message.edit_reply_markup(reply_markup=None)
        except TelegramError as error:
            log.info("could not remove the Describe button: %s", error)
        kind = next((kind for kind, data in DESCRIBE_CALLBACKS.items() if data == query.data), "image")
        await self._ask(Asking(message, key, user_id, Turn("user", ask_about(kind))))

    # --- retry ---------------------------------------------------------------------------------------------

    async def retry_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The 🔁 button under an answer: only the latest answer of the conversation is answered again."""
        query = update.callback_query
        if query is None or not isinstance(query.message, Message):
            return
        message, user_id = query.message, query.from_user.id
        if not self.services.access.may_ask(user_id, message.chat_id):
            await query.answer(texts.NOT_ALLOWED)
            return
        exchange = await self._retry_target(message, user_id, pressed=message.message_id)
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
                await self._reply(message, texts.NOT_ALLOWED)
            return
        exchange = await self._retry_target(message, user.id, pressed=None)
        if isinstance(exchange, str):
            await self._reply(message, exchange)
            return
        await self._retry(message, user.id, exchange)

    async def _retry_target(self, message: Message, user_id: int, pressed: int | None) -> Exchange | str:
        """The exchange to answer again, or why not: the person who asked and the bot's admins may retry the
        conversation's latest answer once it is finished.  ``pressed``: the answer message whose button it was."""
        services = self.services
        key = conversation_key(message)
        if services.engine is not None and services.engine.is_busy(key):
            return texts.RETRY_RUNNING
        exchange = await services.history.last_exchange(key)
        if exchange is None:
            return texts.NOTHING_TO_RETRY
        if pressed is not None and pressed not in exchange.answer.telegram_message_ids:
            return texts.ONLY_LATEST
        if exchange.question.user_id not in (None, user_id) and not services.access.is_admin(user_id):
            return texts.RETRY_ASKER_ONLY
        return exchange

    async def _retry(self, message: Message, user_id: int, exchange: Exchange) -> None:
        engine = await self._may_ask_now(message, user_id)
        if engine is None:
            return
        try:
            images = [
                await asyncio.to_thread(self.services.prepared, i.data, i.sha256) for i in exchange.question.images
            ]
        except ImageRejected as error:
            await self._reply(message, str(error))
            return
        question = Turn("user", exchange.question.text, tuple(images))
        material = Material.recalled(exchange.question.text)  # what the images are, for the status and the note
        await self._ask(Asking(message, conversation_key(message), user_id, question, material, retried=exchange))

    async def _unbutton(self, message: Message, exchange: Exchange) -> None:
        """Best effort: the answer a retry replaces stays in the chat, without its button."""
        if not exchange.answer.telegram_message_ids:
            return
        try:
            await message.get_bot().edit_message_reply_markup(
                message.chat_id, exchange.answer.telegram_message_ids[-1], reply_markup=None
            )
        except TelegramError as error:
            log.info("could not remove the Retry button in chat %s: %s", message.chat_id, error)

    # --- answering ------------------------------------------------------------------------------------------

    async def _ask(self, asking: Asking) -> None:
        """Put the question to the engine and stream its answer in reply to its message."""
        try:
            await self._put(asking)
        except sqlite3.Error as error:  # a full disk, a read-only volume: the model's slot is free already
            await self._storage_failed(asking.message, error)

    async def _storage_failed(self, message: Message, error: sqlite3.Error) -> None:
        log.error("the history database failed in chat %s: %s", message.chat_id, error)
        await self._reply(message, texts.NOT_STORED)

    async def _put(self, asking: Asking) -> None:
        message, key, question, retried = asking.message, asking.key, asking.question, asking.retried
        if self.services.stopping.is_set():  # a question that got this far during shutdown starts nothing
            await self._reply(message, texts.RESTARTING)
            return
        engine = self.services.engine
        assert engine is not None
        view = await self.services.view(engine, key, before=retried.question.id if retried else None)
        seed = secrets.randbelow(2**31) if retried else None
        events = engine.ask(key, view.turns, question, system_prompt=view.system_prompt, seed=seed)
        try:
            first_event = await anext(events)
        except AlreadyQueued:
            await self._reply(message, texts.STILL_ANSWERING)
            return
        except QueueFull:
            await self._reply(message, texts.BUSY)
            return
        try:
            history = self.services.history
            if retried is None:
                question_id, answer_id = await history.start_exchange(
                    key,
                    question.text,
                    images=asking.material.images,
                    telegram_message_id=asking.telegram_message_id,
                    user_id=asking.user_id,
                )
                reply_to: int | None = message.message_id
            else:
                question_id, new_answer = retried.question.id, await history.replace_answer(retried)
                if new_answer is None:  # another retry replaced it meanwhile
                    await self._reply(message, texts.ONLY_LATEST)
                    return
                answer_id = new_answer
                await self._unbutton(message, retried)
                # in reply to the question, or else (a Describe button's question is no message) to the old answer
                replied = retried.question.telegram_message_ids or retried.answer.telegram_message_ids
                reply_to = replied[0] if replied else None
            await self._stream(asking, question_id, answer_id, first_event, events, reply_to)
        finally:
            await events.aclose()  # type: ignore[attr-defined]  # whatever happened, the model's slot is free at once
        self.services.prepare_soon(key)  # the answer is read into the model's view before the next question

    async def _stream(
        self,
        asking: Asking,
        question_id: int,
        answer_id: int,
        first_event: Event,
        events: AsyncIterator[Event],
        reply_to: int | None,
    ) -> None:
        """The answer is recorded before each step of it is shown (bot/recovery.py), and settled once its
        messages show the final text: a crash or a hurried shutdown at any point leaves it repairable."""
        message, key, material = asking.message, asking.key, asking.material
        services = self.services
        history = services.history
        interval = (
            services.settings.edit_interval_seconds
            if is_private(message)
            else services.settings.group_edit_interval_seconds
        )
        record = AnswerRecord(history, answer_id)
        stream = ReplyStream(
            message.get_bot(),
            message.chat_id,
            record,
            reply_to=reply_to,
            thread_id=key.thread_id or None,
            interval=interval,
            stopping=services.stopping,
            drafts=services.drafts if is_private(message) else None,
        )
        text = ""
        finished: Finished | None = None
        services.askers[key] = asking.user_id or 0
        try:
            await stream.start(texts.PLACEHOLDER)
            event: Event | None = first_event
            while event is not None:
                if isinstance(event, Waiting):
                    await stream.status(texts.waiting(event.position, event.seconds))
                elif isinstance(event, Started):
                    await stream.status(texts.looking(event.images, event.seconds, material.label))
                elif isinstance(event, Chunk):
                    text += event.text
                    await stream.update(text)
                elif isinstance(event, Finished):
                    finished = event
                event = await anext(events, None)
            assert finished is not None
            final = finished.text or text
            record.status = finished.status
            if finished.status == "complete" and not final.strip():
                log.warning("the model gave no answer in chat %s", message.chat_id)
                record.status = "failed"
            await history.set_tokens(_counts(question_id, answer_id, finished))
            # Recorded before the final edit: a follow-up sent the moment the answer looks finished has it as context.
            await stream.finish(final, texts.footer(record.status, final, material.note), retry_keyboard())
            await history.settle(answer_id)
        except Postponed as error:
            log.info("the answer in chat %s is stored; the next start shows its final text (%s)", key.chat_id, error)
        except Undeliverable as error:
            log.info("chat %s cannot receive messages (%s); answer stopped", message.chat_id, error)
            self._cancel(key)
            record.status = "cancelled"
            await record(text, stream.message_ids)
            await history.settle(answer_id)
        except Exception:
            log.exception("answering in chat %s failed", message.chat_id)
            self._cancel(key)
            record.status = "failed"
            try:  # the user is told, unless what failed was the database or Telegram itself
                await stream.finish(text, texts.footer("failed", text, material.note), retry_keyboard())
                await history.settle(answer_id)
            except Exception as error:
                log.warning("could not show the failure in chat %s: %s", message.chat_id, error)
        finally:
            await stream.close()
            services.askers.pop(key, None)

    def _cancel(self, key: ConversationKey) -> None:
        if self.services.engine is not None:
            self.services.engine.cancel(key)


def _is_reaction(message: Message) -> bool:
    """A sticker, or a GIF without a caption in a group: people send them as reactions, not as questions; a
    question replying to one asks about it."""
    return message.sticker is not None or (
        message.animation is not None and not message.caption and not is_private(message)
    )


def _counts(question_id: int, answer_id: int, finished: Finished) -> dict[int, int]:
    """The token counts the model reported; a message without one is estimated later (bot/context_view.py)."""
    counts = {}
    if finished.question_tokens:
        counts[question_id] = finished.question_tokens
    if finished.answer_tokens:
        counts[answer_id] = finished.answer_tokens
    return counts
