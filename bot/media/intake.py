"""What a Telegram message carries that the model can read, turned into images, each fetched once.

Photos come as several sizes (the last is the largest); images sent "as a file" are documents with an image
MIME type or file name; a PDF becomes the images of its pages (bot/media/pages.py) and a video, an animation, a
video message or a video sticker the images of a few frames (bot/media/frames.py); a question may reply to a
message that holds any of these.  A voice message, an audio file or an audio document is a recording, heard
by the speech model as the question (``recording_in``, ``listen_to``).  Files over Telegram's 20 MB bot
download limit, and clips and recordings longer or larger than the limits, are refused from what Telegram
announces, before any download; an image seen before (same ``file_unique_id``) is taken from the history
database instead of Telegram.

Every file is read by the file reader's child process (bot/media/reader.py), photos too: what the bot keeps of
a photo is a decoded, downscaled copy made there (bot/media/stills.py), and the bot's own process decodes nothing
else.  What the reader gave for a file, or why it refused it, is remembered with the file's
``file_unique_id``, so a reply to the same clip is neither downloaded nor read again.  Pages, frames and copies
are stored by content hash, so a follow-up sees them as the first answer saw them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from telegram import Animation, Audio, Bot, Document, Message, Sticker, Video, VideoNote, Voice
from telegram.error import BadRequest, TelegramError

from bot.history import HistoryStore, NewImage, StoredImage
from bot.media.decoding import ImageLimits
from bot.media.frames import Frames
from bot.media.material import Kind, Material, of_frames, of_pages
from bot.media.pages import PDF_MIME, Pages
from bot.media.reader import MediaError, MediaReader
from bot.media.refusal import Refusal
from bot.media.sound import Sound
from bot.media.stills import Still
from engine.images import grid_side

log = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".3gp")
AUDIO_EXTENSIONS = (".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".flac", ".wav")


class IntakeError(Refusal):
    """Why an attachment could not be used: a reason of Telegram's or the file reader's."""


@dataclass(frozen=True)
class Attachment:
    file_id: str
    file_unique_id: str
    file_size: int | None
    mime_type: str | None
    kind: Kind = "image"
    name: str = "photo"  # what people call it, for replies: "PDF", "video", "GIF", "video message", "sticker"
    duration: float | None = None  # seconds, as Telegram announces a clip or a recording
    pixels: int | None = None  # a clip's frame size (width x height), as Telegram announces it


def _clip(media: Video | Animation | VideoNote | Sticker | Document, name: str) -> Attachment:
    if isinstance(media, VideoNote):
        pixels: int | None = media.length * media.length
    else:
        width, height = getattr(media, "width", None), getattr(media, "height", None)
        pixels = width * height if width and height else None
    return Attachment(
        media.file_id,
        media.file_unique_id,
        media.file_size,
        getattr(media, "mime_type", None),
        kind="clip",
        name=name,
        duration=_seconds(getattr(media, "duration", None)),
        pixels=pixels,
    )


def _seconds(duration: timedelta | float | None) -> float | None:
    """python-telegram-bot gives durations as ``timedelta`` (or, configured the old way, whole seconds)."""
    return duration.total_seconds() if isinstance(duration, timedelta) else duration


def _document(document: Document) -> list[Attachment]:
    name = (document.file_name or "").lower()
    mime = document.mime_type or ""
    if mime == "image/gif" or name.endswith(".gif"):
        return [_clip(document, "GIF")]
    if mime.startswith("image/") or name.endswith(IMAGE_EXTENSIONS):
        return [Attachment(document.file_id, document.file_unique_id, document.file_size, document.mime_type)]
    if mime == PDF_MIME or name.endswith(".pdf"):
        return [Attachment(document.file_id, document.file_unique_id, document.file_size, mime, "pdf", "PDF")]
    if mime.startswith("video/") or name.endswith(VIDEO_EXTENSIONS):
        return [_clip(document, "video")]
    return []


def _is_audio_document(document: Document) -> bool:
    name, mime = (document.file_name or "").lower(), document.mime_type or ""
    return mime.startswith("audio/") or mime == "application/ogg" or name.endswith(AUDIO_EXTENSIONS)


def recording_in(message: Message) -> Attachment | None:
    """The recording ``message`` carries, to be heard as a question: a voice message, an audio file, or audio sent
    as a file."""
    media: Voice | Audio | Document | None = message.voice or message.audio
    name = "voice message" if message.voice is not None else "audio file"
    if media is None and message.document is not None and _is_audio_document(message.document):
        media = message.document
    if media is None:
        return None
    duration = _seconds(getattr(media, "duration", None))
    return Attachment(media.file_id, media.file_unique_id, media.file_size, media.mime_type, "sound", name, duration)


async def listen_to(bot: Bot, recording: Attachment, reader: MediaReader, *, max_seconds: float) -> Sound:
    """The recording as the speech model hears it, read by ``reader``; refused from what Telegram announces
    before anything is downloaded.  Raises IntakeError."""
    if recording.duration is not None and recording.duration > max_seconds:
        raise IntakeError("sound_too_long", duration=recording.duration, max_seconds=max_seconds)
    try:
        return await reader.sound(await _download(bot, recording), max_seconds=max_seconds)
    except MediaError as error:
        raise IntakeError(error.reason, **error.data) from error


def attachments_in(message: Message) -> list[Attachment]:
    """What in ``message`` the model can be shown: a photo, an image file, a PDF, or a clip (a video, an
    animation, a video message, a video sticker, a video or GIF sent as a file)."""
    if message.photo:
        largest = message.photo[-1]
        return [Attachment(largest.file_id, largest.file_unique_id, largest.file_size, "image/jpeg")]
    for media, name in ((message.animation, "GIF"), (message.video, "video"), (message.video_note, "video message")):
        if media is not None:  # an animation also comes as a document: it is taken here, as a clip
            return [_clip(media, name)]
    sticker = message.sticker
    if sticker is not None:
        if sticker.is_video:
            return [_clip(sticker, "sticker")]
        if not sticker.is_animated:  # a still sticker is a WebP image
            return [
                Attachment(sticker.file_id, sticker.file_unique_id, sticker.file_size, "image/webp", name="sticker")
            ]
        return []
    return _document(message.document) if message.document is not None else []


def unsupported_kind(message: Message) -> str | None:
    """What kind of media the bot cannot read ``message`` holds (one of bot/texts.py's UNSUPPORTED), so the reply
    can say what it got."""
    if message.sticker is not None and message.sticker.is_animated and not message.sticker.is_video:
        return "animated_sticker"
    for attribute in ("location", "contact", "poll"):
        if getattr(message, attribute, None):
            return attribute
    if message.document is not None and not attachments_in(message) and recording_in(message) is None:
        return "file"
    return None


def unreadable(messages: Sequence[Message]) -> str | None:
    """What kind of media in a question the bot cannot read, or None: the one place that decides which
    questions are refused for their attachments.

    Anything sent with the question that the model can neither be shown nor hear counts, caption or not (a
    file of another kind among an album's photos too), and so does the message a question without attachments
    replies to: a question about a file the model never sees would only get an invented answer."""
    for message in messages:
        kind = unsupported_kind(message)
        if kind is not None:
            return kind
    if any(attachments_in(message) for message in messages):
        return None
    replied = next((message.reply_to_message for message in messages if message.reply_to_message), None)
    return unsupported_kind(replied) if replied is not None else None


@dataclass(frozen=True)
class MediaLimits:
    """How much of a PDF or a clip one question may show the model (bot/settings.py)."""

    pdf_pages: int
    video_frames: int
    video_max_seconds: float
    num_crops: int
    max_images: int  # images that fit in the room a question may take of the conversation's token budget


async def gather(
    bot: Bot,
    history: HistoryStore,
    attachments: Sequence[Attachment],
    question: str,
    limits: MediaLimits,
    reader: MediaReader,
) -> Material:
    """The images a question's attachments show the model: photos as the copies the bot keeps, a PDF's pages or a
    clip's frames (one PDF or clip per question), all read by ``reader``; raises IntakeError."""
    media = [attachment for attachment in attachments if attachment.kind != "image"]
    try:
        if not media:
            return Material(await _all([fetch(bot, history, attachment, reader) for attachment in attachments]))
        if len(attachments) > 1:
            raise IntakeError("one_at_a_time", name=media[0].name)
        attachment = media[0]
        if attachment.kind == "pdf":
            limit = min(limits.pdf_pages, limits.max_images)

            async def render() -> Pages:
                data = await _download(bot, attachment)
                return await reader.pages(data, question, limit=limit, num_crops=limits.num_crops)

            found = await reader.remembered(attachment.file_unique_id, render, ("pages", question, limits))
            return of_pages(found, [_new_image(image, "image/png") for image in found.images])
        _check_clip(attachment, limits)
        side, limit = grid_side(limits.num_crops), min(limits.video_frames, limits.max_images)

        async def sample() -> Frames:
            data = await _download(bot, attachment)
            return await reader.frames(data, limit=limit, max_seconds=limits.video_max_seconds, long_side=side)

        clip = await reader.remembered(attachment.file_unique_id, sample, ("frames", limits))
        return of_frames(clip, attachment.name, [_new_image(image, "image/jpeg") for image in clip.images])
    except MediaError as error:
        raise IntakeError(error.reason, **error.data) from error


async def _all(fetches: Sequence[Awaitable[NewImage]]) -> list[NewImage]:
    """An album's photos read side by side; when one is refused, the others stop (their readers with them)."""
    tasks = [asyncio.ensure_future(fetching) for fetching in fetches]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _check_clip(attachment: Attachment, limits: MediaLimits) -> None:
    """Refused from what Telegram announces, before anything is downloaded."""
    if attachment.duration is not None and attachment.duration > limits.video_max_seconds:
        raise IntakeError(
            "too_long", name=attachment.name, duration=attachment.duration, max_seconds=limits.video_max_seconds
        )
    if attachment.pixels is not None and attachment.pixels > ImageLimits().max_pixels:
        raise IntakeError("announced_too_large", name=attachment.name)


def _new_image(
    data: bytes, mime_type: str, file_unique_id: str | None = None, width: int | None = None, height: int | None = None
) -> NewImage:
    """An image to store, by content hash, made by the reader: a copy, a rendered page or a frame."""
    return NewImage(data, hashlib.sha256(data).hexdigest(), file_unique_id, mime_type, width, height, bounded=True)


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


async def fetch(bot: Bot, history: HistoryStore, attachment: Attachment, reader: MediaReader) -> NewImage:
    """A photo or an image file as the copy the bot keeps: the one stored for the same Telegram file, or one
    made by ``reader`` from a download; raises MediaError or IntakeError."""
    known = await history.image_by_file_unique_id(attachment.file_unique_id)
    if known is not None:
        if not known.bounded:
            known = await bounded(history, reader, known)
        return NewImage(known.data, known.sha256, known.file_unique_id, known.mime_type, bounded=True)

    async def copy() -> Still:
        return await reader.still(await _download(bot, attachment))

    made = await reader.remembered(attachment.file_unique_id, copy, "still")
    return _new_image(made.data, made.mime_type, attachment.file_unique_id, made.width, made.height)


async def bounded(history: HistoryStore, reader: MediaReader, image: NewImage | StoredImage) -> StoredImage:
    """An image stored by a version before the copies (as it was sent, up to 20 MB and 40 megapixels) made into
    the copy, in the reader's child like any file from outside, and stored in its place; a database that cannot
    take it now (a full disk) only means that it is made again the next time.  Raises MediaError."""
    made = await reader.still(image.data)
    copy = _new_image(made.data, made.mime_type, None, made.width, made.height)
    try:
        await history.replace_image(image.sha256, copy)
    except sqlite3.Error as error:
        log.warning("could not store the copy of an image stored before copies: %s", error)
    return StoredImage(copy.sha256, copy.data, image.file_unique_id, copy.mime_type, bounded=True)


async def _download(bot: Bot, attachment: Attachment) -> bytes:
    if attachment.file_size is not None and attachment.file_size > MAX_DOWNLOAD_BYTES:
        raise IntakeError("too_big")
    try:
        file = await bot.get_file(attachment.file_id)
        if file.file_size is not None and file.file_size > MAX_DOWNLOAD_BYTES:
            raise IntakeError("too_big")
        if _names_a_local_file(file.file_path):
            log.warning("refused a download whose file_path names a file on this machine")
            raise IntakeError("not_downloaded")
        return bytes(await file.download_as_bytearray())
    except BadRequest as error:
        raise IntakeError("too_big" if "too big" in error.message.lower() else "not_downloaded") from error
    except TelegramError as error:
        log.warning("download failed: %s", error)
        raise IntakeError("not_downloaded") from error
