"""What the bot's handlers share, created at start-up: settings, history, access rules and refusals, the engine
(which may arrive later, after /convert), the answers in progress, and the work the model does ahead of
questions."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.admission.access import AccessPolicy, GroupAdmins, UserRateLimiter
from bot.admission.answers_in_progress import AnswersInProgress
from bot.admission.refusals import Refusals
from bot.history import ConversationKey, HistoryStore, NewImage, StoredImage, StoredImageLimits
from bot.history.context_view import View, conversation_view, image_gone
from bot.media.decoding import ImageRejected
from bot.media.image_cache import PreparedImageCache
from bot.media.intake import bounded
from bot.media.reader import MediaError, MediaReader
from bot.output.drafts import Drafts
from bot.settings import Settings
from engine.engine import Engine
from engine.images import PreparedImage

log = logging.getLogger(__name__)


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
    answers: AnswersInProgress = field(default_factory=AnswersInProgress)
    refusals: Refusals = field(default_factory=Refusals)
    group_admins: GroupAdmins = field(default_factory=GroupAdmins)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    images: PreparedImageCache = field(init=False)
    media: MediaReader = field(init=False)  # reads every file from outside in a child (bot/media/reader.py)
    drafts: Drafts = field(init=False)  # whether private chats' answers stream as drafts (bot/output/drafts.py)

    def __post_init__(self) -> None:
        settings = self.settings
        self.images = PreparedImageCache(settings.prepared_images_mb * 1024 * 1024)
        self.media = MediaReader(memory_mb=settings.reader_memory_mb)
        self.history.limit_images(
            StoredImageLimits(settings.stored_images_per_chat, settings.stored_images_mb * 1024 * 1024)
        )
        self.drafts = Drafts(self.settings.stream_drafts, self.settings.draft_interval_seconds)

    async def prepared(self, image: NewImage | StoredImage) -> PreparedImage:
        """The image decoded off the event loop (or found in the cache); raises ImageRejected.  The bot's process
        decodes only the copies its file reader made; an image an older version stored as it was sent is made
        into one first, in the reader's child (bot/media/intake.py's ``bounded``)."""
        if not image.bounded:
            try:
                image = await bounded(self.history, self.media, image)
            except MediaError as error:
                raise ImageRejected(error.reason, **error.data) from error
        return await asyncio.to_thread(self.images.get, image.data, image.sha256)

    async def prepared_all(self, images: Sequence[NewImage | StoredImage]) -> list[PreparedImage]:
        """``prepared`` for each, in order; raises ImageRejected."""
        return [await self.prepared(image) for image in images]

    async def view(self, engine: Engine, key: ConversationKey, before: int | None = None) -> View:
        """What the model sees of the conversation before its next question, or before message ``before``
        (bot/history/context_view.py)."""
        return await conversation_view(
            self.history,
            key,
            budget=engine.history_tokens,
            system_prompt=self.settings.system_prompt,
            num_crops=engine.model.num_crops,
            prepare=self.prepared,
            before=before,
        )

    async def image_gone(self, key: ConversationKey) -> bool:
        """Whether a text question now comes straight after a photo deleted under the limits on stored images
        (bot/history/context_view.py), so the answer tells the person to send it again."""
        return await image_gone(self.history, key)

    def prepare_soon(self, key: ConversationKey) -> None:
        """Have the model read the conversation now, ahead of its next question, unless a question of it is
        already in line (which reads it anyway)."""
        engine = self.engine
        if engine is not None and not self.answers.busy(key) and not self.stopping.is_set():
            self.in_background(self._prepare(engine, key))

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
            self.in_background(self._warm_up(engine, since))

    async def _warm_up(self, engine: Engine, since: float) -> None:
        room = engine.kv_cache_tokens * 3 // 4  # the rest for the questions that come meanwhile
        for key in await self.history.recent_conversations(since):
            view = await self.view(engine, key)
            room -= view.tokens
            if room < 0:
                break
            prepared = await engine.prepare(key, view.turns, system_prompt=view.system_prompt)
            log.info("warmed up chat %s in %.1f s (%d pieces)", key.chat_id, prepared.seconds, prepared.pieces)

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Work nobody waits for (read-ahead, an album's question): cancelled and awaited at shutdown
        (bot/app.py ``teardown``)."""
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    """A task nobody awaits would keep its failure to itself: it goes to the log, as a handler's would."""
    if not task.cancelled() and task.exception() is not None:
        log.error("work in the background failed", exc_info=task.exception())
