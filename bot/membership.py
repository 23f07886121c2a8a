"""Being added to a group: a bot's username is public, so anyone can add it to a group of their own.  The bot
stays where an admin or an allowed user added it, or in an allowed chat, and leaves any other group or channel
at once (unless ``LEAVE_UNINVITED_GROUPS`` is off), so a stranger's group costs it nothing from then on."""

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
        log.info("added to chat %s by user %s, who is neither an admin nor allowed: leaving it", chat.id, inviter)
        try:
            await context.bot.leave_chat(chat.id)
        except TelegramError as error:
            log.info("could not leave chat %s: %s", chat.id, error)
