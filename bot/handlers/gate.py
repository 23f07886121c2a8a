"""The one gate every update passes before any handler (python-telegram-bot's ``TypeHandler`` in group -1):
whether it is meant for the bot, whether its sender may use the bot there, whether they are asking too fast,
and whether a pressed button is one the bot put under that message.

Deciding this once, up front, keeps each refusal cheap and alike: a stranger in a group gets silence, a
stranger in a private chat one "private bot" now and then (bot/admission/refusals.py), someone asking too fast one
"too fast", and nothing that is refused costs a handler, a download or a wait for Telegram's rate limit.
Questions, commands and button presses all count against the same per-person rate (``/stop`` and the Stop
button never do: stopping must always work); an album counts once.
"""

from __future__ import annotations

import logging

from cachetools import TTLCache
from telegram import CallbackQuery, Message, Update
from telegram.constants import MessageEntityType
from telegram.ext import ApplicationHandlerStop, ContextTypes

from bot import texts
from bot.admission.access import sender_of
from bot.admission.addressing import addressed, is_reaction
from bot.media.intake import attachments_in, recording_in
from bot.output.buttons import is_stop, offered
from bot.output.chat import conversation_key, is_private
from bot.services import Services

log = logging.getLogger(__name__)

FREE_COMMANDS = frozenset({"stop"})  # never rate-limited
ALBUMS_REMEMBERED = 4096  # albums whose first part was counted; later parts of the same album go the same way
ALBUM_SECONDS = 60.0


class Gate:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._albums: TTLCache[str, bool] = TTLCache(ALBUMS_REMEMBERED, ALBUM_SECONDS)  # album -> its first allowed

    async def check(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Returns to let the update through to the handlers; raises ApplicationHandlerStop once it is dealt with."""
        if not isinstance(update, Update):
            raise ApplicationHandlerStop
        if update.callback_query is not None:
            await self._button(update.callback_query)
        elif update.my_chat_member is not None:
            return  # the bot was added to or removed from a chat: bot/handlers/membership.py decides
        elif update.message is not None:
            await self._message(update.message)
        else:  # edits, channel posts, polls, reactions...: nothing the bot answers
            raise ApplicationHandlerStop

    async def _message(self, message: Message) -> None:
        if message.migrate_to_chat_id or message.migrate_from_chat_id:
            return  # a group's upgrade: bot/handlers/group_upgrades.py checks both of Telegram's announcements itself
        command = _command(message, self.services.bot_username)
        if command is None and not await self._for_the_bot(message):
            raise ApplicationHandlerStop
        sender = sender_of(message)
        if sender is None:  # another bot
            raise ApplicationHandlerStop
        access = self.services.access
        if not access.may_ask(sender.user_id, message.chat_id):
            self.services.refusals.log(sender.id, message.chat_id, "not on the allowlist")
            if is_private(message):  # a group need not hear about each member's access, nor a stranger's group
                await self.services.refusals.say(message, sender.id, texts.NOT_ALLOWED)
            raise ApplicationHandlerStop
        if command in FREE_COMMANDS or access.is_admin(sender.user_id):
            return
        album = message.media_group_id
        if album is not None and album in self._albums:  # one question: the part that counted decided for all
            if self._albums[album]:
                return
            raise ApplicationHandlerStop
        if album is not None and not is_private(message) and not addressed(message, self.services.bot_username):
            return  # a group's album counts when its part addressing the bot comes; a holiday album never does
        allowed = await self.services.limiter.allow(sender.id)
        if album is not None:
            self._albums[album] = allowed
        if not allowed:
            self.services.refusals.log(sender.id, message.chat_id, "asking too fast")
            await self.services.refusals.say(message, sender.id, texts.TOO_FAST)
            raise ApplicationHandlerStop

    async def _for_the_bot(self, message: Message) -> bool:
        """Private messages; in groups a mention of the bot or a reply to it, a recording replying to a message the
        bot was asked about (a voice message cannot mention it), and the parts of an album (only one of which
        carries the mention; bot/handlers/questions.py looks at the album whole).  A sticker or a caption-less
        GIF is a reaction, never a question."""
        if is_reaction(message):
            return False
        username = self.services.bot_username
        if is_private(message) or message.media_group_id is not None or addressed(message, username):
            return True
        replied, sender = message.reply_to_message, sender_of(message)
        if replied is None or recording_in(message) is None or sender is None:
            return False
        if replied.message_id == message.message_thread_id:  # in a forum topic every message replies to its first
            return False
        if not self.services.access.may_ask(sender.user_id, message.chat_id):  # a stranger costs no look-up
            return False
        shown = attachments_in(replied)
        photo = shown[0].file_unique_id if shown else None
        return await self.services.history.brought(conversation_key(message), replied.message_id, photo)

    async def _button(self, query: CallbackQuery) -> None:
        message = query.message
        if not isinstance(message, Message) or not offered(message, query.data):
            chat = message.chat.id if message is not None else 0
            self.services.refusals.log(query.from_user.id, chat, "a button the message does not offer")
            await self.services.refusals.answer(query, texts.BUTTON_EXPIRED)
            raise ApplicationHandlerStop
        user = query.from_user.id
        access = self.services.access
        if not access.may_ask(user, message.chat_id):
            await self.services.refusals.answer(query, texts.NOT_ALLOWED)
            raise ApplicationHandlerStop
        if is_stop(query.data) or access.is_admin(user):
            return
        if not await self.services.limiter.allow(user):
            await self.services.refusals.answer(query, texts.TOO_FAST)
            raise ApplicationHandlerStop


def _command(message: Message, username: str) -> str | None:
    """The command a message starts with, if it is for this bot (``/help`` or ``/help@thisbot``, not
    ``/help@otherbot``)."""
    text = message.text or ""
    entity = next(iter(message.entities or ()), None)
    if entity is None or entity.type != MessageEntityType.BOT_COMMAND or entity.offset != 0:
        return None
    name, _, target = text[1 : entity.length].partition("@")
    if target and target.lower() != username.lower():
        return None
    return name.lower()
