"""When a message is meant for the bot, and what its question is once the bot's name is taken out.

In a private chat every message is; in a group only a mention of the bot or a reply to one of its messages
(commands have handlers of their own), so the bot stays quiet in the group's ordinary conversation.
"""

from __future__ import annotations

from telegram import Message
from telegram.constants import MessageEntityType

from bot.output.chat import is_private


def mentions(message: Message, username: str) -> bool:
    """Telegram gives entity offsets in UTF-16 code units, so the text is cut in those."""
    text = message.text or message.caption or ""
    entities = message.entities or message.caption_entities or ()
    for entity in entities:
        if entity.type == MessageEntityType.MENTION:
            mention = text.encode("utf-16-le")[entity.offset * 2 : (entity.offset + entity.length) * 2]
            if mention.decode("utf-16-le").lower() == f"@{username.lower()}":
                return True
    return False


def addressed(message: Message, username: str) -> bool:
    if is_private(message):
        return True
    reply = message.reply_to_message
    if reply is not None and reply.from_user is not None and reply.from_user.username == username:
        return True
    return mentions(message, username)


def question_text(message: Message, username: str) -> str:
    """The text or caption without the bot's @name, whitespace collapsed; "" when nothing is left."""
    text = message.text or message.caption or ""
    if username:
        for variant in (f"@{username}", f"@{username.lower()}"):
            text = text.replace(variant, " ")
    return " ".join(text.split()) if text.strip() else ""


def is_reaction(message: Message) -> bool:
    """A sticker, or a GIF without a caption in a group: people send them as reactions, not as questions; a
    question replying to one asks about it."""
    return message.sticker is not None or (
        message.animation is not None and not message.caption and not is_private(message)
    )
