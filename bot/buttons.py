"""The buttons under the bot's messages that ask the model something, and their callback data: one table,
read both ways (the button, and the handler's pattern)."""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot import texts
from bot.material import Kind

# Describe, under a photo, PDF or clip kept without a question
DESCRIBE_CALLBACKS: dict[Kind, str] = {"image": "describe", "pdf": "describe pdf", "clip": "describe clip"}
RETRY_CALLBACK = "retry"  # 🔁, under a finished answer


def describe_keyboard(kind: Kind) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(texts.DESCRIBE_BUTTON, callback_data=DESCRIBE_CALLBACKS[kind])]])


def described(data: str | None) -> Kind:
    """The kind a Describe button's data names."""
    return next((kind for kind, value in DESCRIBE_CALLBACKS.items() if value == data), "image")


def retry_keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(texts.RETRY_BUTTON, callback_data=RETRY_CALLBACK)]])
