"""Who is asking, and who gets model time: the allowlists from settings, a group's own administrators, and a
per-person rate so one flood cannot starve a group.

A message in a group is not always from a person: an anonymous administrator writes as the group itself, and
a linked channel's posts (or a member posting as a channel) come from that channel.  Such a sender has no user
id; it is known by the chat it writes as, and it gets what the group allows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiolimiter import AsyncLimiter
from cachetools import TTLCache
from telegram import Bot, Message, Update
from telegram.constants import ChatMemberStatus, ChatType
from telegram.error import TelegramError

log = logging.getLogger(__name__)

# People remembered at once by the rate limiter and the group-administrator cache; the least recent go first.
REMEMBERED = 10_000
GROUP_ADMIN_SECONDS = 60.0  # how long an answer to "does this user administer this group?" is trusted
IDLE_LIMITER_SECONDS = 600.0  # a rate bucket idle this long is full again anyway, so it may be dropped


@dataclass(frozen=True)
class Sender:
    """Who sent a message or pressed a button.  ``id``: the person's user id, or for a message sent as a chat
    (an anonymous administrator writing as the group, a channel posting in it) the group's id, which is negative
    and never collides with a user's."""

    id: int
    user_id: int | None  # the person, when Telegram says who it is
    group_admin: bool = False  # an anonymous administrator: an administrator of the group, writing as the group


def sender_of(message: Message) -> Sender | None:
    """None for other bots, which the bot never answers.  A message sent as a chat (an anonymous administrator, a
    linked channel's post, a member posting as a channel of theirs) is the group's own: nobody can tell the
    people behind them apart, and one person with a hundred channels must not be a hundred senders."""
    chat = message.sender_chat
    if chat is not None:
        group = message.chat.type != ChatType.CHANNEL
        return Sender(message.chat_id if group else chat.id, None, group_admin=group and chat.id == message.chat_id)
    user = message.from_user
    if user is None or user.is_bot:
        return None
    return Sender(user.id, user.id)


def sender_for(update: Update) -> Sender | None:
    """Who sent an update's message or pressed its button (a button press always names its person)."""
    if update.callback_query is not None:
        user = update.callback_query.from_user
        return Sender(user.id, user.id)
    return sender_of(update.effective_message) if update.effective_message is not None else None


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

    def is_known(self, user_id: int | None) -> bool:
        """An admin or an allowed user: someone whose adding the bot to a group counts as an invitation."""
        return user_id is not None and (user_id in self.admins or user_id in self.users)

    def may_ask(self, user_id: int | None, chat_id: int) -> bool:
        """With both allowlists empty only admins are served: a personal bot is private by default.  A sender
        without a user id (an anonymous administrator, a channel) gets what its chat allows."""
        return self.is_known(user_id) or chat_id in self.chats


class UserRateLimiter:
    """A token bucket per person (aiolimiter); refusing is instant, nobody is made to wait silently.  Buckets of
    people not seen for a while are dropped, so a crowd of one-time senders costs bounded memory."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._limiters: TTLCache[int, AsyncLimiter] = TTLCache(REMEMBERED, IDLE_LIMITER_SECONDS)

    async def allow(self, sender_id: int) -> bool:
        limiter = self._limiters.get(sender_id)
        if limiter is None:
            limiter = AsyncLimiter(self._per_minute, 60)
        self._limiters[sender_id] = limiter  # seen now: kept for another idle period
        if not limiter.has_capacity():
            return False
        await limiter.acquire()  # returns at once: the capacity was just confirmed
        return True


class GroupAdmins:
    """Whether a user administers a group, asked of Telegram (``getChatMember``) at most once a minute per person
    and group: a demotion counts within that minute, and a busy group's commands and buttons do not each cost a
    call."""

    def __init__(self) -> None:
        self._known: TTLCache[tuple[int, int], bool] = TTLCache(REMEMBERED, GROUP_ADMIN_SECONDS)

    async def administers(self, bot: Bot, chat_id: int, user_id: int) -> bool:
        found = self._known.get((chat_id, user_id))
        if found is not None:
            return found
        try:
            member = await bot.get_chat_member(chat_id, user_id)
        except TelegramError as error:
            log.info("could not ask whether user %s administers chat %s: %s", user_id, chat_id, error)
            return False
        found = member.status in (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)
        self._known[(chat_id, user_id)] = found
        return found
