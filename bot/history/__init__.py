"""Conversation history in SQLite (see store.py)."""

from bot.history.store import (
    ConversationKey,
    HistoryError,
    HistoryStore,
    NewImage,
    StoredImage,
    StoredMessage,
    StoreStats,
)

__all__ = [
    "ConversationKey",
    "HistoryError",
    "HistoryStore",
    "NewImage",
    "StoreStats",
    "StoredImage",
    "StoredMessage",
]
