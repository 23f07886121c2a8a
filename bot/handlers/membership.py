"""Being added to a group: a bot's username is public, so anyone can add it to a group of their own.  The bot
stays where an admin or an allowed user added it, or in an allowed chat, and leaves any other group or channel
at once (unless ``LEAVE_UNINVITED_GROUPS`` is off), so a stranger's group costs it nothing from then on.  Leaving
is itself best effort, sent only while Telegram's budget has room: the gate keeps such a group silent anyway,
and a stranger adding the bot to thousands of groups must not queue thousands of requests."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.constants import ChatMemberStatus, ChatType
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.services import Services

log = logging.getLogger(__name__)

PRESENT = (ChatMemberStatus.MEMBER, ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.RESTRICTED)


class Membership:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def on_my_chat_member(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        change = update.my_chat_member
        if change is None or change.chat.type == ChatType.PRIVATE:
            return
        joined = change.new_chat_member.status in PRESENT and change.old_chat_member.status not in PRESENT
        if not joined:  # left, removed, or a change of rights where it already was
            return
        chat, inviter = change.chat, change.from_user.id
        access = self.services.access
        if access.is_known(inviter) or chat.id in access.chats or not self.services.settings.leave_uninvited_groups:
            log.info("added to chat %s by user %s", chat.id, inviter)
            return
        self.services.refusals.log(inviter, None, "added the bot to a group while neither an admin nor allowed")
        try:  # only if the budget has room now: thousands of groups must not hold the bot; it is silent there
            await context.bot.leave_chat(chat.id, rate_limit_args="now_or_never")  # type: ignore[call-arg]
        except TelegramError as error:
            log.debug("did not leave chat %s: %s", chat.id, error)
