"""Conversation history in SQLite (see store.py)."""

from bot.history.store import (
    ConversationKey,
    HistoryError,
    HistoryStore,
    Interrupted,
    NewImage,
    StoredImage,
    StoredMessage,
    StoreStats,
)

__all__ = [
    "ConversationKey",
    "HistoryError",
    "HistoryStore",
    "Interrupted",
    "NewImage",
    "StoreStats",
    "StoredImage",
    "StoredMessage",
]
