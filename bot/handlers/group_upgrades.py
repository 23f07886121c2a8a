"""A group upgraded to a supergroup: Telegram gives it a new chat id, and its history, its access and its
answer in progress follow, once the upgrade is confirmed."""

from __future__ import annotations

import logging
from collections import OrderedDict

from telegram import Update
from telegram.ext import ContextTypes

from bot.services import Services

log = logging.getLogger(__name__)

# Upgrades announced in one chat and still waiting for the announcement in the other; the oldest are dropped.
PENDING = 64


class GroupUpgrades:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._pending: OrderedDict[tuple[int, int], str] = OrderedDict()

    async def on_migration(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Telegram announces a group's upgrade in both chats: ``migrate_to_chat_id`` in the old group and
        ``migrate_from_chat_id`` in the new supergroup.  History and access follow the new id only once both
        announcements of the same pair have arrived, and only for a chat the bot knows, so a single forged
        update moves nothing."""
        message = update.effective_message
        if message is None:
            return
        if message.migrate_to_chat_id:
            pair, half = (message.chat_id, message.migrate_to_chat_id), "to"
        elif message.migrate_from_chat_id:
            pair, half = (message.migrate_from_chat_id, message.chat_id), "from"
        else:
            return
        if self._pending.get(pair, half) == half:  # the first of the two, or the same one again
            self._pending[pair] = half
            while len(self._pending) > PENDING:
                self._pending.popitem(last=False)
            return
        del self._pending[pair]
        await self._move(*pair)

    async def _move(self, old: int, new: int) -> None:
        services = self.services
        if old not in services.access.chats and not await services.history.has_chat(old):
            log.info("group %s became supergroup %s; nothing of it is known here", old, new)
            return
        moved = await services.history.move_chat(old, new)
        services.access.follow_migration(old, new)
        running = services.answers.move_chat(old, new)
        log.info("group %s became supergroup %s; %d conversations moved (%d answering)", old, new, moved, running)
