"""Runs the real bot Application against the stand-in Bot API server, as a test sees it."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiosqlite
from PIL import Image
from telegram.ext import Application

from bot import texts
from bot.app import build_application, setup, stop_work, teardown
from bot.history import ConversationKey, HistoryStore, StoredMessage
from bot.output import buttons
from bot.output.edits import CURSOR
from bot.services import Services
from bot.settings import Settings, load_settings
from devkit.bot_api_server import FakeBotApi, SentMessage

ADMIN = 42
USER = 7
STRANGER = 666


@dataclass
class RunningBot:
    api: FakeBotApi
    application: Application
    settings: Settings

    @property
    def services(self) -> Services:
        return self.application.bot_data["services"]


def bot_settings(api: FakeBotApi, store_root: Path, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "telegram_bot_token": api.token,
        "telegram_api_base_url": api.base_url,
        "telegram_file_base_url": api.base_file_url,
        "admin_user_ids": str(ADMIN),
        "allowed_user_ids": str(USER),
        "data_dir": data_dir,
        "model_store_dir": store_root,
        "max_new_tokens": 40,
        "edit_interval_seconds": 0.2,
        "group_edit_interval_seconds": 0.5,
        "draft_interval_seconds": 0.2,
        "kv_cache_gb": 1,
        "system_prompt": "You are a test assistant.",
        "measure_speed_at_start": False,  # a quiet start: the model answers nothing but what a test asks
    }
    values.update(overrides)
    return load_settings(**values)


@asynccontextmanager
async def running_bot(
    api: FakeBotApi, settings: Settings, *, long_answers: bool = False, loaded: bool = True
) -> AsyncIterator[RunningBot]:
    """``long_answers``: the random-weight model may say <|end|> at any point; tests that need an answer
    still running (Stop, queue positions, flood control) make it write all MAX_NEW_TOKENS.  ``loaded``: yields
    once the model has loaded, as most tests want it (else at once, the model still loading, as a bot starts)."""
    application = build_application(settings)
    async with application:
        await setup(application)
        services: Services = application.bot_data["services"]
        if long_answers and services.engine is not None:
            services.engine.settings = replace(services.engine.settings, ignore_eos=True)
        if loaded and services.engine is not None:
            await services.engine.loaded()
        await application.start()
        assert application.updater is not None
        await application.updater.start_polling(poll_interval=0.0, timeout=1)
        try:
            yield RunningBot(api, application, settings)
        finally:  # as a signal ends the bot (bot/app.py)
            stop_work(application)
            await application.updater.stop()
            await application.stop()
            await teardown(application)


def photo_bytes(
    colour: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (640, 480), fmt: str = "JPEG"
) -> bytes:
    image = Image.new("RGB", size, colour)
    image.paste((255 - colour[0], 255 - colour[1], 255 - colour[2]), (60, 60, 220, 220))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def callbacks(message: SentMessage) -> list[str]:
    """The callback data of a message's inline buttons."""
    rows = (message.reply_markup or {}).get("inline_keyboard", [])
    return [str(button.get("callback_data", "")) for row in rows for button in row]


def button(message: SentMessage, pattern: re.Pattern[str]) -> str | None:
    """The data of the message's button of this kind (bot/output/buttons.py), if it has one."""
    return next((data for data in callbacks(message) if pattern.match(data)), None)


def has_retry(message: SentMessage) -> bool:
    """The message carries the 🔁 button, and nothing else."""
    data = callbacks(message)
    return len(data) == 1 and buttons.RETRY.match(data[0]) is not None


def press(api: FakeBotApi, message: SentMessage, pattern: re.Pattern[str], user_id: int) -> str:
    """A press of the message's own button of this kind; returns the query's id."""
    data = button(message, pattern)
    assert data is not None, f"message {message.message_id} has no such button: {callbacks(message)}"
    return api.push_callback(message.chat_id, message.message_id, data, user_id=user_id)


def answering(message: SentMessage) -> bool:
    """The message shows the Stop button: an answer is being written into it."""
    return button(message, buttons.STOP) is not None


def finished(message: SentMessage) -> bool:
    """A message of a finished answer: its Stop button gave way to the Retry button (under the last part) or
    to none, and the placeholder to text."""
    return bool(message.edits) and (not callbacks(message) or has_retry(message)) and message.text != texts.PLACEHOLDER


async def wait_answers(api: FakeBotApi, chat: int, count: int, timeout: float = 60) -> None:
    """An answer is done when its message lost the Stop button."""
    await api.wait_for(
        lambda: len([m for m in api.messages(chat) if finished(m)]) >= count,
        timeout,
        f"{count} finished answers in chat {chat}",
    )


def is_status(text: str) -> bool:
    """A text that says what is happening rather than words of an answer (an empty draft shows "Thinking…")."""
    return text in ("", texts.PLACEHOLDER) or text.startswith(("⏳", "👀", texts.THINKING))


def answer_drafts(api: FakeBotApi, chat: int) -> list[str]:
    """The drafts that showed words of an answer in a private chat, in order."""
    return [text for text in api.draft_texts(chat) if not is_status(text)]


def streaming(api: FakeBotApi, chat: int) -> bool:
    """An answer is being written where the user sees it: a draft with words, or a message with the cursor."""
    draft = api.shown_draft(chat)
    return (draft is not None and not is_status(draft.text)) or any(m.text.endswith(CURSOR) for m in api.messages(chat))


def shown_texts(api: FakeBotApi, chat: int) -> list[str]:
    """Everything the chat showed: every draft, then every version of every message."""
    return [*api.draft_texts(chat), *(edit for message in api.messages(chat) for edit in message.edits)]


async def stored_messages(history: HistoryStore, key: ConversationKey) -> list[StoredMessage]:
    """Every message of a conversation, oldest first, whatever the model sees of it (a reader of its own)."""
    async with (
        aiosqlite.connect(history.path) as db,
        db.execute(
            "SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.chat_id = ? AND c.thread_id = ? ORDER BY m.id",
            (key.chat_id, key.thread_id),
        ) as cursor,
    ):
        ids = [int(row[0]) for row in await cursor.fetchall()]
    return await history.messages(ids)


async def stored_answers(bot: RunningBot, key: ConversationKey, count: int, timeout: float = 90) -> list[StoredMessage]:
    """The conversation once ``count`` of its answers are finished, as the history says: long answers span several
    messages, and a group may hold notes between them, so the chat's look is no sign of being done."""
    deadline = time.monotonic() + timeout
    while True:
        stored = await stored_messages(bot.services.history, key)
        if len([m for m in stored if m.role == "assistant" and m.status != "streaming"]) >= count:
            return stored
        assert time.monotonic() < deadline, f"{count} answers in {key} not finished: {[m.status for m in stored]}"
        await asyncio.sleep(0.1)
