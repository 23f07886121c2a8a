"""What a Telegram message carries that the model can read, and getting those images exactly once.

Photos come as several sizes (the last is the largest); images sent "as a file" are documents with an image
MIME type or file name; a question may reply to a message that holds the photo.  Files over Telegram's 20 MB
bot download limit are refused from their announced size, before any download, and an image seen before
(same ``file_unique_id``) is taken from the history database instead of Telegram.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from telegram import Bot, Message
from telegram.error import BadRequest, TelegramError

from bot.history import HistoryStore, NewImage

log = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
TOO_BIG = "That file is larger than 20 MB, which is as much as Telegram lets bots download."
NOT_DOWNLOADED = "I could not download that image from Telegram. Please send it again."
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


class IntakeError(Exception):
    """A friendly, user-facing reason why an attachment could not be used."""


@dataclass(frozen=True)
class Attachment:
    file_id: str
    file_unique_id: str
    file_size: int | None
    mime_type: str | None


def images_in(message: Message) -> list[Attachment]:
    if message.photo:
        largest = message.photo[-1]
        return [Attachment(largest.file_id, largest.file_unique_id, largest.file_size, "image/jpeg")]
    document = message.document
    if document is not None:
        name = (document.file_name or "").lower()
        if (document.mime_type or "").startswith("image/") or name.endswith(IMAGE_EXTENSIONS):
            return [Attachment(document.file_id, document.file_unique_id, document.file_size, document.mime_type)]
    return []


def unsupported_kind(message: Message) -> str | None:
    """A name for media the bot cannot read, so the reply can say what it got."""
    for attribute, name in (
        ("sticker", "stickers"),
        ("voice", "voice messages"),
        ("audio", "audio files"),
        ("video", "videos"),
        ("video_note", "video messages"),
        ("animation", "GIFs sent as animations"),
        ("location", "locations"),
        ("contact", "contacts"),
        ("poll", "polls"),
    ):
        if getattr(message, attribute, None):
            return name
    if message.document is not None and not images_in(message):
        return "this kind of file"
    return None


def unreadable(messages: Sequence[Message]) -> str | None:
    """What in a question the bot cannot read, named for the reply, or None: the one place that decides which
    questions are refused for their attachments.

    Anything sent with the question that is not an image counts, caption or not (an album with a video among
    its photos too), and so does the message a question without images replies to: a question about a file the
    model never sees would only get an invented answer."""
    for message in messages:
        kind = unsupported_kind(message)
        if kind is not None:
            return kind
    if any(images_in(message) for message in messages):
        return None
    replied = next((message.reply_to_message for message in messages if message.reply_to_message), None)
    return unsupported_kind(replied) if replied is not None else None


def _names_a_local_file(file_path: str | None) -> bool:
    """python-telegram-bot reads a ``file_path`` that exists on local disk instead of downloading it (meant for
    a Bot API server in local mode, which this bot does not use); a server answering ``/etc/passwd`` or a
    path into the data directory must not make the bot read its own files."""
    if not file_path:
        return False
    try:
        return Path(file_path).exists()
    except (OSError, ValueError):
        return True


async def fetch(bot: Bot, history: HistoryStore, attachment: Attachment) -> NewImage:
    known = await history.image_by_file_unique_id(attachment.file_unique_id)
    if known is not None:
        return NewImage(known.data, known.sha256, known.file_unique_id, known.mime_type)
    if attachment.file_size is not None and attachment.file_size > MAX_DOWNLOAD_BYTES:
        raise IntakeError(TOO_BIG)
    try:
        file = await bot.get_file(attachment.file_id)
        if file.file_size is not None and file.file_size > MAX_DOWNLOAD_BYTES:
            raise IntakeError(TOO_BIG)
        if _names_a_local_file(file.file_path):
            log.warning("refused a download whose file_path names a file on this machine")
            raise IntakeError(NOT_DOWNLOADED)
        data = bytes(await file.download_as_bytearray())
    except BadRequest as error:
        raise IntakeError(TOO_BIG if "too big" in error.message.lower() else NOT_DOWNLOADED) from error
    except TelegramError as error:
        log.warning("download failed: %s", error)
        raise IntakeError(NOT_DOWNLOADED) from error
    return NewImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        file_unique_id=attachment.file_unique_id,
        mime_type=attachment.mime_type,
    )
