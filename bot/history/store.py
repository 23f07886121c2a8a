"""Per-chat conversation history in SQLite: the source of truth for what the model sees.

The store writes conversations, messages, personas and the model's view of each conversation, and reads them
back; the file's opening and transactions are in bot/history/database.py, its schema and upgrades in
bot/history/schema.py, and the images messages show, stored once and bounded, in bot/history/images.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, cast, get_args

import aiosqlite

from bot.history.database import open_database, transaction
from bot.history.images import (
    NewImage,
    StoredImage,
    StoredImageLimits,
    find_image,
    images_of,
    insert_image,
    link_images,
    prune_images,
    replace_with_copy,
)
from bot.history.schema import upgrade
from engine.context_policy import Window
from engine.generation import Status

# An answer's status as stored: the engine's end of an answer, or "streaming" while it runs.  The schema's CHECK
# (migration "conversations-messages-images") lists the same; tests/test_history_store.py compares them.
StoredStatus = Status | Literal["streaming"]
STATUSES: tuple[str, ...] = ("streaming", *get_args(Status))
RECENT_QUESTIONS = 500  # a recording replying to a message the bot was asked about counts among these (``brought``)


@dataclass(frozen=True)
class ConversationKey:
    chat_id: int
    thread_id: int = 0


@dataclass(frozen=True)
class StoredMessage:
    id: int
    role: str
    text: str
    status: StoredStatus
    user_id: int | None
    telegram_message_ids: tuple[int, ...]
    created_at: float
    images: tuple[StoredImage, ...]
    images_pruned: int = 0  # images it had that were deleted under the limits on stored images
    heard: str | None = None  # a question asked aloud: what the speech model heard (its text is the question read)


@dataclass(frozen=True)
class OutlineRow:
    """A message without its images' bytes: what the context policy needs to choose the model's view."""

    id: int
    role: str
    text: str
    tokens: int | None  # as the model's tokenizer counted it; None for messages stored before counts were kept
    images: int
    images_pruned: int = 0


@dataclass(frozen=True)
class Outline:
    window: Window
    rows: list[OutlineRow]  # the pinned exchange's messages and every message from the window's start


@dataclass(frozen=True)
class Interrupted:
    """An answer whose Telegram messages may not show its final form: cut by a crash (``status`` "streaming", as
    found) or finished while the bot shut down without waiting for Telegram (its final status)."""

    message_id: int
    chat_id: int
    thread_id: int
    telegram_message_ids: tuple[int, ...]
    text: str
    status: StoredStatus
    question_message_id: int | None = None  # the question's Telegram message, which a repaired answer replies to
    heard: str | None = None  # what was heard of a question asked aloud, shown above its answer


@dataclass(frozen=True)
class Exchange:
    """A conversation's latest question and its answer, the last message of the conversation."""

    question: StoredMessage
    answer: StoredMessage


@dataclass(frozen=True)
class StoreStats:
    conversations: int
    messages: int
    images: int
    database_bytes: int


class HistoryStore:
    def __init__(self, path: Path, connection: aiosqlite.Connection) -> None:
        self.path = path
        self._db = connection
        # One connection serves every chat: a transaction must not interleave with another task's statements,
        # and a read must not see another task's uncommitted rows.
        self._lock = asyncio.Lock()
        self._image_limits: StoredImageLimits | None = None

    def limit_images(self, limits: StoredImageLimits) -> None:
        """From now on, storing a message with images deletes the oldest images past ``limits``."""
        self._image_limits = limits

    @classmethod
    async def open(cls, path: Path) -> HistoryStore:
        path = Path(path)
        connection, version = await open_database(path)
        try:
            await upgrade(connection, path, version)
        except BaseException:
            await connection.close()
            raise
        return cls(path, connection)

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> HistoryStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._lock, transaction(self._db):
            yield

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        async with self._lock:
            yield

    async def _conversation_id(self, key: ConversationKey, now: float) -> int:
        await self._db.execute(
            "INSERT INTO conversations (chat_id, thread_id, created_at, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (chat_id, thread_id) DO UPDATE SET updated_at = excluded.updated_at",
            (key.chat_id, key.thread_id, now, now),
        )
        async with self._db.execute(
            "SELECT id FROM conversations WHERE chat_id = ? AND thread_id = ?", (key.chat_id, key.thread_id)
        ) as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    # --- writing -----------------------------------------------------------------------------------------

    async def add_user_message(
        self,
        key: ConversationKey,
        text: str,
        *,
        images: Sequence[NewImage] = (),
        telegram_message_id: int | None = None,
        user_id: int | None = None,
        tokens: int | None = None,
    ) -> int:
        async with self._transaction():
            return await self._insert_user_message(
                await self._conversation_id(key, time.time()), text, images, telegram_message_id, user_id, tokens
            )

    async def start_exchange(
        self,
        key: ConversationKey,
        question: str,
        *,
        images: Sequence[NewImage] = (),
        telegram_message_id: int | None = None,
        user_id: int | None = None,
    ) -> tuple[int, int]:
        """A question and its answer, empty and streaming, in one write (the question is never stored without
        the answer that recovery needs); returns both ids."""
        async with self._transaction():
            conversation = await self._conversation_id(key, time.time())
            question_id = await self._insert_user_message(conversation, question, images, telegram_message_id, user_id)
            return question_id, await self._insert_assistant_message(conversation, "", "streaming", ())

    async def _insert_user_message(
        self,
        conversation: int,
        text: str,
        images: Sequence[NewImage],
        telegram_message_id: int | None,
        user_id: int | None,
        tokens: int | None = None,
    ) -> int:
        now = time.time()
        for image in images:
            await insert_image(self._db, image, now)
        ids = [telegram_message_id] if telegram_message_id is not None else []
        cursor = await self._db.execute(
            "INSERT INTO messages (conversation_id, role, text, user_id, telegram_message_ids, created_at, tokens) "
            "VALUES (?, 'user', ?, ?, ?, ?, ?)",
            (conversation, text, user_id, json.dumps(ids), now, tokens),
        )
        message_id = int(cursor.lastrowid or 0)
        await link_images(self._db, message_id, images)
        if images and self._image_limits is not None:
            await prune_images(self._db, self._image_limits, conversation, message_id)
        return message_id

    async def replace_image(self, sha256: str, copy: NewImage) -> None:
        """``copy`` takes the place of image ``sha256`` in every message that shows it, with its Telegram file id
        (for images stored as sent by an older version: bot/media/intake.py's ``bounded``)."""
        async with self._transaction():
            await replace_with_copy(self._db, sha256, copy)

    async def _insert_assistant_message(
        self, conversation: int, text: str, status: StoredStatus, telegram_message_ids: Sequence[int]
    ) -> int:
        """A streaming answer is unsettled until its messages show their final form (``settle``)."""
        cursor = await self._db.execute(
            "INSERT INTO messages (conversation_id, role, text, status, telegram_message_ids, created_at, settled) "
            "VALUES (?, 'assistant', ?, ?, ?, ?, ?)",
            (conversation, text, status, json.dumps(list(telegram_message_ids)), time.time(), status != "streaming"),
        )
        return int(cursor.lastrowid or 0)

    async def update_assistant_message(
        self, message_id: int, text: str, *, telegram_message_ids: Sequence[int], status: StoredStatus
    ) -> None:
        _check_status(status)
        async with self._transaction():
            await self._db.execute(
                "UPDATE messages SET text = ?, status = ?, telegram_message_ids = ? "
                "WHERE id = ? AND role = 'assistant'",
                (text, status, json.dumps(list(telegram_message_ids)), message_id),
            )

    async def hear(self, question_id: int, question: str, transcript: str) -> None:
        """A question asked aloud, once heard: ``question`` as the model reads it takes the question's place, and
        ``transcript`` is kept as what was heard."""
        async with self._transaction():
            await self._db.execute(
                "UPDATE messages SET text = ?, heard = ? WHERE id = ? AND role = 'user'",
                (question, transcript, question_id),
            )

    async def forget_exchange(self, question_id: int, answer_id: int) -> None:
        """An exchange that asked nothing (a recording without words): gone, with images only it showed."""
        async with self._transaction():
            await self._db.execute("DELETE FROM messages WHERE id IN (?, ?)", (question_id, answer_id))

    async def replace_answer(self, exchange: Exchange) -> int | None:
        """A new answer, empty and streaming, takes the place of the exchange's answer in one write (the old
        one is forgotten, the question kept); returns the new answer's id, or None if the old one is gone.

        The new answer is written before the old one goes, so it gets an id of its own: SQLite would give it
        the old one's otherwise, and a second replacement of the same exchange would delete it."""
        async with self._transaction():
            async with self._db.execute(
                "SELECT conversation_id FROM messages WHERE id = ? AND role = 'assistant'", (exchange.answer.id,)
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return None
            conversation = int(row[0])
            answer = await self._insert_assistant_message(conversation, "", "streaming", ())
            await self._db.execute("DELETE FROM messages WHERE id = ?", (exchange.answer.id,))
            await self._db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (time.time(), conversation))
            return answer

    async def set_persona(self, key: ConversationKey, text: str | None) -> None:
        """The conversation's own system prompt; None returns it to the configured one."""
        async with self._transaction():
            if text is None:
                await self._db.execute(
                    "DELETE FROM personas WHERE chat_id = ? AND thread_id = ?", (key.chat_id, key.thread_id)
                )
            else:
                await self._db.execute(
                    "INSERT INTO personas (chat_id, thread_id, text, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (chat_id, thread_id) DO UPDATE SET text = excluded.text, "
                    "updated_at = excluded.updated_at",
                    (key.chat_id, key.thread_id, text, time.time()),
                )

    async def settle(self, message_id: int) -> None:
        """The answer's messages show its final form: nothing for recovery to repair."""
        async with self._transaction():
            await self._db.execute("UPDATE messages SET settled = 1 WHERE id = ?", (message_id,))

    async def set_tokens(self, counts: dict[int, int]) -> None:
        """Record messages' token counts (by message id), as the model's tokenizer found them."""
        async with self._transaction():
            await self._db.executemany(
                "UPDATE messages SET tokens = ? WHERE id = ?", [(t, i) for i, t in counts.items()]
            )

    async def set_window(self, key: ConversationKey, window: Window) -> None:
        async with self._transaction():
            await self._db.execute(
                "UPDATE conversations SET view_start = ?, view_pin = ? WHERE chat_id = ? AND thread_id = ?",
                (window.start, window.pin, key.chat_id, key.thread_id),
            )

    async def reset(self, key: ConversationKey) -> int:
        """Forget a conversation; images no other message uses go with it."""
        async with self._transaction():
            async with self._db.execute(
                "SELECT COUNT(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE c.chat_id = ? AND c.thread_id = ?",
                (key.chat_id, key.thread_id),
            ) as cursor:
                row = await cursor.fetchone()
            await self._db.execute(  # its messages go with it, and their images with the last one (schema 3)
                "DELETE FROM conversations WHERE chat_id = ? AND thread_id = ?", (key.chat_id, key.thread_id)
            )
        return int(row[0]) if row else 0

    async def move_chat(self, old_chat_id: int, new_chat_id: int) -> int:
        """A group upgraded to a supergroup gets a new id; its conversations and personas follow it (once: the
        update that announces it can arrive twice, from the old chat and from the new one); returns how many
        conversations moved."""
        async with self._transaction():
            cursor = await self._db.execute(
                "UPDATE OR IGNORE conversations SET chat_id = ? WHERE chat_id = ?", (new_chat_id, old_chat_id)
            )
            await self._db.execute(
                "UPDATE OR IGNORE personas SET chat_id = ? WHERE chat_id = ?", (new_chat_id, old_chat_id)
            )
        return cursor.rowcount

    async def mark_interrupted(self) -> list[Interrupted]:
        """At start-up: answers cut by a crash (still streaming) are marked cancelled, keeping the text saved so
        far; returns them, with the answers whose final edits a shutdown left undone, so that their messages in
        Telegram can be finished too (each is settled once that is done)."""
        async with self._transaction():
            async with self._db.execute(
                "SELECT m.id, c.chat_id, c.thread_id, m.telegram_message_ids, m.text, m.status, "
                "q.telegram_message_ids, q.heard FROM messages m LEFT JOIN messages q ON q.id = ("
                "SELECT MAX(id) FROM messages WHERE conversation_id = m.conversation_id AND role = 'user' "
                "AND id < m.id) "
                "JOIN conversations c ON c.id = m.conversation_id "
                "WHERE m.role = 'assistant' AND (m.status = 'streaming' OR m.settled = 0) ORDER BY m.id"
            ) as cursor:
                rows = await cursor.fetchall()
            await self._db.execute("UPDATE messages SET status = 'cancelled' WHERE status = 'streaming'")
        return [
            Interrupted(
                int(row[0]),
                row[1],
                row[2],
                tuple(json.loads(row[3] or "[]")),
                row[4],
                _status(row[5]),
                next(iter(json.loads(row[6] or "[]")), None),
                row[7],
            )
            for row in rows
        ]

    # --- reading -----------------------------------------------------------------------------------------

    async def outline(self, key: ConversationKey) -> Outline:
        """Where the model's view starts, and the messages the context policy chooses from (no image bytes):
        the pinned exchange (up to 64 messages from the pin, cut by the policy) and all from the start on.
        Answers still being written are left out."""
        async with self._reading():
            async with self._db.execute(
                "SELECT id, view_start, view_pin FROM conversations WHERE chat_id = ? AND thread_id = ?",
                (key.chat_id, key.thread_id),
            ) as cursor:
                found = await cursor.fetchone()
            if found is None:
                return Outline(Window(), [])
            conversation, start, pin = int(found[0]), found[1], found[2]
            query = (
                "SELECT m.id, m.role, m.text, m.tokens, "
                "(SELECT COUNT(*) FROM message_images mi WHERE mi.message_id = m.id), m.images_pruned "
                "FROM messages m WHERE m.conversation_id = ? AND m.status != 'streaming' "
            )
            rows = []
            if pin is not None and (start is None or pin < start):
                async with self._db.execute(
                    query + "AND m.id >= ? AND m.id < ? ORDER BY m.id LIMIT 64", (conversation, pin, start)
                ) as cursor:
                    rows += list(await cursor.fetchall())
            async with self._db.execute(query + "AND m.id >= ? ORDER BY m.id", (conversation, start or 0)) as cursor:
                rows += list(await cursor.fetchall())
        return Outline(
            Window(start, pin),
            [OutlineRow(int(row[0]), str(row[1]), str(row[2]), row[3], int(row[4]), int(row[5])) for row in rows],
        )

    async def messages(self, message_ids: Sequence[int]) -> list[StoredMessage]:
        """These messages with their images, oldest first."""
        if not message_ids:
            return []
        marks = ",".join("?" * len(message_ids))
        async with (
            self._reading(),
            self._db.execute(
                "SELECT id, role, text, status, user_id, telegram_message_ids, created_at, images_pruned, heard "  # noqa: S608
                f"FROM messages WHERE id IN ({marks}) ORDER BY id",
                list(message_ids),
            ) as cursor,
        ):
            rows = list(await cursor.fetchall())
            images = await images_of(self._db, [int(row[0]) for row in rows])
        return [
            StoredMessage(
                id=int(row[0]),
                role=str(row[1]),
                text=str(row[2]),
                status=_status(row[3]),
                user_id=row[4],
                telegram_message_ids=tuple(json.loads(row[5])),
                created_at=float(row[6]),
                images=tuple(images.get(int(row[0]), [])),
                images_pruned=int(row[7]),
                heard=row[8],
            )
            for row in rows
        ]

    async def last_exchange(self, key: ConversationKey) -> Exchange | None:
        """The conversation's latest question and its answer, if a finished answer is its last message."""
        async with (
            self._reading(),
            self._db.execute(
                "SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE c.chat_id = ? AND c.thread_id = ? ORDER BY m.id DESC LIMIT 2",
                (key.chat_id, key.thread_id),
            ) as cursor,
        ):
            ids = [int(row[0]) for row in await cursor.fetchall()]
        found = await self.messages(ids)
        if [m.role for m in found] != ["user", "assistant"] or found[1].status == "streaming":
            return None
        return Exchange(*found)

    async def latest_images_message(self, key: ConversationKey) -> tuple[int, ...] | None:
        """The Telegram message ids of the conversation's latest message that brought images: the photo (or file)
        in view, which a Describe button may ask about."""
        async with (
            self._reading(),
            self._db.execute(
                "SELECT m.telegram_message_ids FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE c.chat_id = ? AND c.thread_id = ? AND m.role = 'user' "
                "AND EXISTS (SELECT 1 FROM message_images mi WHERE mi.message_id = m.id) ORDER BY m.id DESC LIMIT 1",
                (key.chat_id, key.thread_id),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return None if row is None else tuple(json.loads(row[0]))

    async def brought(self, key: ConversationKey, telegram_message_id: int, file_unique_id: str | None) -> bool:
        """Whether Telegram message ``telegram_message_id`` brought one of the conversation's ``RECENT_QUESTIONS``
        latest questions (or a photo kept for one), or the image with ``file_unique_id`` is one of theirs: a
        message the bot answered, or a photo it was asked about in a reply.  Bounded, as the gate asks it for
        messages nobody has counted against a rate yet."""
        async with (
            self._reading(),
            self._db.execute(
                "SELECT 1 FROM (SELECT m.id, m.telegram_message_ids FROM messages m "
                "JOIN conversations c ON c.id = m.conversation_id WHERE c.chat_id = ? AND c.thread_id = ? "
                "AND m.role = 'user' ORDER BY m.id DESC LIMIT ?) AS recent WHERE "
                "EXISTS (SELECT 1 FROM json_each(recent.telegram_message_ids) WHERE value = ?) OR EXISTS ("
                "SELECT 1 FROM message_images mi JOIN images i ON i.sha256 = mi.image_sha256 "
                "WHERE mi.message_id = recent.id AND i.file_unique_id = ?) LIMIT 1",
                (key.chat_id, key.thread_id, RECENT_QUESTIONS, telegram_message_id, file_unique_id),
            ) as cursor,
        ):
            return await cursor.fetchone() is not None

    async def awaits_question(self, key: ConversationKey) -> bool:
        """Whether the conversation's latest message is a photo or file kept without a question, still unasked."""
        async with (
            self._reading(),
            self._db.execute(
                "SELECT m.role FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE c.chat_id = ? AND c.thread_id = ? ORDER BY m.id DESC LIMIT 1",
                (key.chat_id, key.thread_id),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return row is not None and row[0] == "user"

    async def persona(self, key: ConversationKey) -> str | None:
        """The conversation's own system prompt, if it has one."""
        async with (
            self._reading(),
            self._db.execute(
                "SELECT text FROM personas WHERE chat_id = ? AND thread_id = ?", (key.chat_id, key.thread_id)
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def recent_conversations(self, since: float) -> list[ConversationKey]:
        """Conversations with a message since ``since`` (a Unix time), the most recent first."""
        async with (
            self._reading(),
            self._db.execute(
                "SELECT chat_id, thread_id FROM conversations WHERE updated_at >= ? ORDER BY updated_at DESC",
                (since,),
            ) as cursor,
        ):
            return [ConversationKey(int(row[0]), int(row[1])) for row in await cursor.fetchall()]

    async def has_chat(self, chat_id: int) -> bool:
        """Whether any conversation or persona of this chat (or of one of its forum topics) is stored."""
        async with (
            self._reading(),
            self._db.execute(
                "SELECT 1 FROM conversations WHERE chat_id = ? UNION ALL SELECT 1 FROM personas WHERE chat_id = ? "
                "LIMIT 1",
                (chat_id, chat_id),
            ) as cursor,
        ):
            return await cursor.fetchone() is not None

    async def image_by_file_unique_id(self, file_unique_id: str) -> StoredImage | None:
        async with self._reading():
            return await find_image(self._db, file_unique_id)

    async def stats(self) -> StoreStats:
        async with (
            self._reading(),
            self._db.execute(
                "SELECT (SELECT COUNT(*) FROM conversations), (SELECT COUNT(*) FROM messages), "
                "(SELECT COUNT(*) FROM images)"
            ) as cursor,
        ):
            row = await cursor.fetchone()
        assert row is not None
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return StoreStats(int(row[0]), int(row[1]), int(row[2]), size)


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown message status {status!r}")


def _status(value: object) -> StoredStatus:
    """A status read back from the database, where the schema's CHECK let in only these."""
    status = str(value)
    _check_status(status)
    return cast(StoredStatus, status)
