"""Who gets model time: the allowlists from settings, and a per-user rate so one flood cannot starve a group."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

log = logging.getLogger(__name__)


@dataclass
class AccessPolicy:
    admins: frozenset[int]
    users: frozenset[int]
    chats: frozenset[int]

    def follow_migration(self, old_chat_id: int, new_chat_id: int) -> None:
        """An allowed group that became a supergroup stays allowed under its new id (called once both of
        Telegram's announcements of the move arrived); the admin is told to update the setting so it survives
        a restart."""
        if old_chat_id in self.chats and new_chat_id not in self.chats:
            self.chats = self.chats | {new_chat_id}
            log.warning(
                "allowed chat %s is now supergroup %s: add %s to ALLOWED_CHAT_IDS to keep it after a restart",
                old_chat_id,
                new_chat_id,
                new_chat_id,
            )

    def is_admin(self, user_id: int | None) -> bool:
        return user_id is not None and user_id in self.admins

    def may_ask(self, user_id: int | None, chat_id: int) -> bool:
        """With both allowlists empty only admins are served: a personal bot is private by default."""
        if self.is_admin(user_id):
            return True
        return (user_id is not None and user_id in self.users) or chat_id in self.chats


class UserRateLimiter:
    """A token bucket per user (aiolimiter); refusing is instant, nobody is made to wait silently."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._limiters: dict[int, AsyncLimiter] = {}

    async def allow(self, user_id: int) -> bool:
        limiter = self._limiters.setdefault(user_id, AsyncLimiter(self._per_minute, 60))
        if not limiter.has_capacity():
            return False
        await limiter.acquire()  # returns at once: the capacity was just confirmed
        return True
