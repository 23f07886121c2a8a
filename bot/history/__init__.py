"""Conversation history in SQLite (see store.py)."""

from bot.history.store import (
    ConversationKey,
    Exchange,
    HistoryError,
    HistoryStore,
    Interrupted,
    NewImage,
    Outline,
    OutlineRow,
    StoredImage,
    StoredImageLimits,
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
