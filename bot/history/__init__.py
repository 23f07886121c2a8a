"""Conversation history in SQLite (see store.py), and what the model sees of it (context_view.py)."""

from bot.history.database import HistoryError
from bot.history.images import NewImage, StoredImage, StoredImageLimits
from bot.history.store import (
    ConversationKey,
    Exchange,
    HistoryStore,
    Interrupted,
    Outline,
    OutlineRow,
    StoredMessage,
    StoreStats,
)

__all__ = [
    "ConversationKey",
    "Exchange",
    "HistoryError",
    "HistoryStore",
    "Interrupted",
    "NewImage",
    "Outline",
    "OutlineRow",
    "StoreStats",
    "StoredImage",
    "StoredImageLimits",
    "StoredMessage",
]
