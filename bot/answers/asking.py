"""One question on its way to the model: where it was asked, by whom, and what it shows."""

from __future__ import annotations

from dataclasses import dataclass, field

from telegram import Message

from bot.history import ConversationKey, Exchange
from bot.media.material import Material
from engine.conversation import Turn
from engine.pipeline_protocol import Speech


@dataclass(frozen=True)
class Asking:
    message: Message  # the answer replies to it
    key: ConversationKey
    asker: int  # who asks (bot/admission/access.py Sender.id): stored with the question, and whose turn it is in line
    question: Turn
    material: Material = field(default_factory=Material)  # images new to the history, and what they are
    telegram_message_id: int | None = None  # the question's own message, if it is one
    retried: Exchange | None = None  # the exchange answered again; its answer is replaced
    speech: Speech | None = None  # the question asked aloud: heard by the speech model, after ``question``'s text
