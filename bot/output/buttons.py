"""Every button the bot puts under its messages, and its callback data: one table, read both ways (the button,
and the pattern its handler matches).

Each button's data names what it belongs to (the answer it stops or retries, the photo it describes, the
conversion question it confirms), so a handler acts only on its own answer or question, never on whatever the
chat is doing now; and the gate (bot/handlers/gate.py) accepts a press only with data the pressed message really
offers, so data a modified client makes up reaches no handler.
"""

from __future__ import annotations

import re

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message

from bot import texts
from bot.media.material import Kind

# The pattern each handler matches; the groups are what the data names.
STOP = re.compile(r"^stop:(\d+)$")  # ⏹ under an answer being written: the answer's id in the history
RETRY = re.compile(r"^retry:(\d+)$")  # 🔁 under a finished answer: the answer's id
DESCRIBE = re.compile(r"^describe:(image|pdf|clip):(\d+)$")  # under a file kept without a question: its message
CONFIRM = re.compile(r"^convert:(yes|no):([A-Za-z0-9_-]+)$")  # whether to run a repository's code: the question


def _one(text: str, data: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(text, callback_data=data)]])


def stop_keyboard(answer_id: int) -> InlineKeyboardMarkup:
    return _one(texts.STOP_BUTTON, f"stop:{answer_id}")


def retry_keyboard(answer_id: int) -> InlineKeyboardMarkup:
    return _one(texts.RETRY_BUTTON, f"retry:{answer_id}")


def describe_keyboard(kind: Kind, kept_message_id: int) -> InlineKeyboardMarkup:
    """``kept_message_id``: the message that brought the photo, PDF or clip."""
    return _one(texts.DESCRIBE_BUTTON, f"describe:{kind}:{kept_message_id}")


def confirm_keyboard(ticket: str, repo_id: str, revision: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [InlineKeyboardButton(texts.trust_button(repo_id, revision), callback_data=f"convert:yes:{ticket}")],
            [InlineKeyboardButton(texts.CANCEL_BUTTON, callback_data=f"convert:no:{ticket}")],
        ]
    )


def offered(message: Message, data: str | None) -> bool:
    """Whether ``message`` carries a button with this data: Telegram does not check that a press's data is one
    the message offers."""
    markup = message.reply_markup
    if data is None or markup is None:
        return False
    return any(button.callback_data == data for row in markup.inline_keyboard for button in row)


def is_stop(data: str | None) -> bool:
    return data is not None and STOP.match(data) is not None
