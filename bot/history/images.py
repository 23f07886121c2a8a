"""The history's images: stored once, by content hash, as BLOBs in the same database as the messages that use
them (one file to back up, no paths built from user input, and the same atomicity as those messages), and
bounded.

Stored images are bounded in number per chat and in bytes in all (``StoredImageLimits``): past either limit, the
images of the oldest messages go, in the same transaction as the message that brings new ones, and each of those
messages counts how many it lost, so its text stays and the model's view can say that an image was there.

Each function runs inside a transaction or a read of the store (bot/history/store.py), on its connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import aiosqlite

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewImage:
    data: bytes
    sha256: str
    file_unique_id: str | None = None
    mime_type: str | None = None
    width: int | None = None
    height: int | None = None
    bounded: bool = False  # made by the bot's file reader, no larger than the model can use: safe to decode


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    data: bytes
    file_unique_id: str | None
    mime_type: str | None
    bounded: bool = False  # False: stored as sent, by a version before the bot kept copies (bot/media/intake.py)


@dataclass(frozen=True)
class StoredImageLimits:
    """How many images a chat keeps (counted over all its topics), and how many bytes of images all chats keep."""

    per_chat: int
    total_bytes: int


async def insert_image(connection: aiosqlite.Connection, image: NewImage, now: float) -> None:
    """Stored once by content hash.  Its Telegram file id goes with it unless another row holds it (an
    image stored as sent by an older version, whose copy could not be stored in its place)."""
    await connection.execute(
        "INSERT INTO images (sha256, file_unique_id, data, size, mime_type, width, height, created_at, bounded) "
        "VALUES (:sha256, CASE WHEN EXISTS (SELECT 1 FROM images WHERE file_unique_id = :file) THEN NULL "
        "ELSE :file END, :data, :size, :mime_type, :width, :height, :now, :bounded) "
        "ON CONFLICT (sha256) DO UPDATE SET "
        "file_unique_id = COALESCE(images.file_unique_id, excluded.file_unique_id)",
        {
            "sha256": image.sha256,
            "file": image.file_unique_id,
            "data": image.data,
            "size": len(image.data),
            "mime_type": image.mime_type,
            "width": image.width,
            "height": image.height,
            "now": now,
            "bounded": image.bounded,
        },
    )


async def link_images(connection: aiosqlite.Connection, message_id: int, images: Sequence[NewImage]) -> None:
    """The message shows ``images``, inserted before, in this order."""
    for position, image in enumerate(images):
        await connection.execute(
            "INSERT INTO message_images (message_id, image_sha256, position) VALUES (?, ?, ?)",
            (message_id, image.sha256, position),
        )


async def prune_images(
    connection: aiosqlite.Connection, limits: StoredImageLimits, conversation: int, newest: int
) -> None:
    """The images of the oldest messages go, whole messages at a time, until the chat keeps at most
    ``limits.per_chat`` and all chats ``limits.total_bytes``; the newest message keeps its own."""
    async with connection.execute(
        "SELECT mi.message_id, COUNT(*) FROM message_images mi JOIN messages m ON m.id = mi.message_id "
        "WHERE m.conversation_id IN (SELECT id FROM conversations WHERE chat_id = "
        "(SELECT chat_id FROM conversations WHERE id = ?)) GROUP BY mi.message_id ORDER BY mi.message_id DESC",
        (conversation,),
    ) as cursor:
        counts = [(int(row[0]), int(row[1])) for row in await cursor.fetchall()]
    kept, pruned = 0, 0
    for message_id, count in counts:
        kept += count
        if message_id != newest and kept > limits.per_chat:
            pruned += await _prune_message(connection, message_id)
    while await _image_bytes(connection) > limits.total_bytes:
        async with connection.execute(
            "SELECT message_id FROM message_images WHERE message_id != ? ORDER BY message_id LIMIT 1", (newest,)
        ) as cursor:
            oldest = await cursor.fetchone()
        if oldest is None:
            break
        pruned += await _prune_message(connection, int(oldest[0]))
    if pruned:
        log.info("%d stored images deleted, oldest first, to stay within the limits on stored images", pruned)


async def _prune_message(connection: aiosqlite.Connection, message_id: int) -> int:
    """The message keeps its text and counts the images it lost; its token count goes (its images counted)."""
    cursor = await connection.execute("DELETE FROM message_images WHERE message_id = ?", (message_id,))
    await connection.execute(
        "UPDATE messages SET images_pruned = images_pruned + ?, tokens = NULL WHERE id = ?",
        (cursor.rowcount, message_id),
    )
    return cursor.rowcount


async def _image_bytes(connection: aiosqlite.Connection) -> int:
    async with connection.execute("SELECT COALESCE(SUM(size), 0) FROM images") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def replace_with_copy(connection: aiosqlite.Connection, sha256: str, copy: NewImage) -> None:
    """``copy`` takes the place of image ``sha256`` in every message that shows it, with its Telegram file id."""
    async with connection.execute("SELECT file_unique_id FROM images WHERE sha256 = ?", (sha256,)) as cursor:
        row = await cursor.fetchone()
    if row is None or copy.sha256 == sha256:
        return
    await insert_image(connection, replace(copy, file_unique_id=None), time.time())
    await connection.execute("UPDATE message_images SET image_sha256 = ? WHERE image_sha256 = ?", (copy.sha256, sha256))
    await connection.execute("DELETE FROM images WHERE sha256 = ?", (sha256,))
    await connection.execute(
        "UPDATE images SET file_unique_id = COALESCE(file_unique_id, ?) WHERE sha256 = ?", (row[0], copy.sha256)
    )


async def images_of(connection: aiosqlite.Connection, message_ids: list[int]) -> dict[int, list[StoredImage]]:
    """Each message's images, in order, by message id."""
    if not message_ids:
        return {}
    marks = ",".join("?" * len(message_ids))
    found: dict[int, list[StoredImage]] = {}
    async with connection.execute(
        f"SELECT mi.message_id, i.sha256, i.data, i.file_unique_id, i.mime_type, i.bounded FROM message_images mi "  # noqa: S608
        f"JOIN images i ON i.sha256 = mi.image_sha256 WHERE mi.message_id IN ({marks}) "
        "ORDER BY mi.message_id, mi.position",
        message_ids,
    ) as cursor:
        async for row in cursor:
            found.setdefault(int(row[0]), []).append(StoredImage(row[1], bytes(row[2]), row[3], row[4], bool(row[5])))
    return found


async def find_image(connection: aiosqlite.Connection, file_unique_id: str) -> StoredImage | None:
    """The image Telegram knows by ``file_unique_id``, if it is stored."""
    async with connection.execute(
        "SELECT sha256, data, file_unique_id, mime_type, bounded FROM images WHERE file_unique_id = ?",
        (file_unique_id,),
    ) as cursor:
        row = await cursor.fetchone()
    return None if row is None else StoredImage(row[0], bytes(row[1]), row[2], row[3], bool(row[4]))
