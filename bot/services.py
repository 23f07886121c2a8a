"""What the bot's handlers share, created at start-up: settings, history, access rules and refusals, the engine
(which may arrive later, after /convert), the answers in progress, and the owner of the work nobody awaits
(bot/running/background.py)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from bot.admission.access import AccessPolicy, GroupAdmins, UserRateLimiter
from bot.admission.answers_in_progress import AnswersInProgress
from bot.admission.refusals import Refusals
from bot.history import HistoryStore, StoredImageLimits
from bot.media.image_cache import PreparedImageCache
from bot.media.prepared import PreparedImages
from bot.media.reader import MediaReader
from bot.output.drafts import Drafts
from bot.running.background import Background
from bot.settings import Settings
from engine.backend import Backend


@dataclass
class Services:
    """What the handlers need, created at start-up (the engine may arrive later, after /convert)."""

    settings: Settings
    history: HistoryStore
    access: AccessPolicy
    limiter: UserRateLimiter
    background: Background  # an album's question, reading ahead, a conversion: cancelled at shutdown
    engine: Backend | None = None
    bot_username: str = ""
    started_at: float = field(default_factory=time.monotonic)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set at shutdown (bot/app.py)
    answers: AnswersInProgress = field(default_factory=AnswersInProgress)
    refusals: Refusals = field(default_factory=Refusals)
    group_admins: GroupAdmins = field(default_factory=GroupAdmins)
    images: PreparedImages = field(init=False)  # decoded for the model, kept for follow-ups (bot/media/prepared.py)
    media: MediaReader = field(init=False)  # reads every file from outside in a child (bot/media/reader.py)
    drafts: Drafts = field(init=False)  # whether private chats' answers stream as drafts (bot/output/drafts.py)

    def __post_init__(self) -> None:
        settings = self.settings
        self.media = MediaReader(memory_mb=settings.reader_memory_mb)
        cache = PreparedImageCache(settings.prepared_images_mb * 1024 * 1024)
        self.images = PreparedImages(self.history, self.media, cache)
        self.history.limit_images(
            StoredImageLimits(settings.stored_images_per_chat, settings.stored_images_mb * 1024 * 1024)
        )
        self.drafts = Drafts(self.settings.stream_drafts, self.settings.draft_interval_seconds)
