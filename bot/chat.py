"""What a Telegram message says about where it was sent, and the one way the bot replies to it."""

from __future__ import annotations

import logging

from telegram import InlineKeyboardMarkup, Message
from telegram.constants import ChatType
from telegram.error import TelegramError

from bot.history import ConversationKey

log = logging.getLogger(__name__)


def conversation_key(message: Message) -> ConversationKey:
    """A chat, or a topic of a forum: each has a conversation of its own."""
    thread = message.message_thread_id if message.is_topic_message and message.message_thread_id else 0
    return ConversationKey(message.chat_id, thread)


def is_private(message: Message) -> bool:
    return message.chat.type == ChatType.PRIVATE


async def reply(message: Message, text: str, markup: InlineKeyboardMarkup | None = None) -> None:
    """Best effort, quoting the message in groups so it is clear whom the bot answers."""
    try:
        await message.reply_text(text, do_quote=not is_private(message), reply_markup=markup)
    except TelegramError as error:
        log.info("could not reply in chat %s: %s", message.chat_id, error)
