"""What a Telegram message says about where it was sent, and the one way the bot replies to it."""

from __future__ import annotations

import logging

from telegram import Bot, InlineKeyboardMarkup, Message, ReplyParameters
from telegram.constants import ChatType
from telegram.error import TelegramError

from bot.history import ConversationKey
from bot.output.pace import Pace, Skipped

log = logging.getLogger(__name__)


def conversation_key(message: Message) -> ConversationKey:
    """A chat, or a topic of a forum: each has a conversation of its own."""
    thread = message.message_thread_id if message.is_topic_message and message.message_thread_id else 0
    return ConversationKey(message.chat_id, thread)


def is_private(message: Message) -> bool:
    return message.chat.type == ChatType.PRIVATE


async def reply(
    message: Message, text: str, markup: InlineKeyboardMarkup | None = None, *, pace: Pace | None = None
) -> Message:
    """In the message's chat and forum topic, quoting it in groups so it is clear whom the bot answers; raises
    TelegramError.  ``pace`` (bot/output/pace.py): by default a reply in a private chat waits its turn, one in a group
    is sent only if the group's budget has room now (``Skipped`` otherwise): in a group only an answer's final
    text waits for the budget, so members' commands cannot hold the bot's update slots while they queue."""
    private = is_private(message)
    quoted = None if private else ReplyParameters(message.message_id, allow_sending_without_reply=True)
    return await message.get_bot().send_message(
        message.chat_id,
        text,
        reply_markup=markup,
        reply_parameters=quoted,
        message_thread_id=message.message_thread_id if message.is_topic_message else None,
        rate_limit_args=pace or ("wait" if private else "now_or_never"),  # type: ignore[call-arg]
    )


async def tell(
    message: Message, text: str, markup: InlineKeyboardMarkup | None = None, *, pace: Pace | None = None
) -> None:
    """``reply``, best effort: a chat that cannot be told now is logged, not raised."""
    try:
        await reply(message, text, markup, pace=pace)
    except Skipped:
        log.debug("not sent in chat %s: its rate limit is spent", message.chat_id)
    except TelegramError as error:
        log.info("could not reply in chat %s: %s", message.chat_id, error)


async def unbutton(bot: Bot, chat_id: int, message_id: int) -> None:
    """Best effort, when the chat's rate limit has room: a button that did its work, or can no longer do it,
    goes."""
    try:
        await bot.edit_message_reply_markup(
            chat_id,
            message_id,
            reply_markup=None,
            rate_limit_args="now_or_never",  # type: ignore[call-arg]
        )
    except TelegramError as error:
        log.info("could not remove the button of message %s in chat %s: %s", message_id, chat_id, error)
