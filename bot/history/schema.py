"""The history database's schema as named migrations, and the runner that applies them in order and records
them by name.

Each migration runs in one transaction with the row that records it, so a crash during an upgrade leaves the
previous schema intact.  A name stays for as long as databases exist that the migration ran on: never edit
or rename a released migration, add a new one.  ``PRAGMA user_version`` also counts the migrations applied,
because phi3bot releases before the names read only that count (and refuse a database with a higher one).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from bot.history.database import HistoryError, transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    name: str
    statements: tuple[str, ...]


# The table that records migrations by name; a database from before the names records those its
# ``user_version`` counts when it is first opened.
RECORD = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name TEXT PRIMARY KEY,
    applied_at REAL  -- NULL for a migration applied before names were recorded
)
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "conversations-messages-images",
        (
            """
            CREATE TABLE conversations (
                id INTEGER PRIMARY KEY,
                chat_id INTEGER NOT NULL,
                thread_id INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                UNIQUE (chat_id, thread_id)
            )
            """,
            """
            CREATE TABLE messages (
                id INTEGER PRIMARY KEY,
                conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
                role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
                text TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'complete'
                    CHECK (status IN ('complete', 'streaming', 'cancelled', 'failed', 'timeout')),
                user_id INTEGER,
                telegram_message_ids TEXT NOT NULL DEFAULT '[]',
                created_at REAL NOT NULL
            )
            """,
            "CREATE INDEX messages_by_conversation ON messages (conversation_id, id)",
            """
            CREATE TABLE images (
                sha256 TEXT PRIMARY KEY,
                file_unique_id TEXT UNIQUE,
                data BLOB NOT NULL,
                size INTEGER NOT NULL,
                mime_type TEXT,
                width INTEGER,
                height INTEGER,
                created_at REAL NOT NULL
            )
            """,
            """
            CREATE TABLE message_images (
                message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
                image_sha256 TEXT NOT NULL REFERENCES images(sha256),
                position INTEGER NOT NULL,
                PRIMARY KEY (message_id, position)
            )
            """,
            "CREATE INDEX message_images_by_image ON message_images (image_sha256)",
        ),
    ),
    # where the model's view of a conversation starts (engine/context_policy.py), and token counts for it
    Migration(
        "token-counts-and-view",
        (
            "ALTER TABLE messages ADD COLUMN tokens INTEGER",
            "ALTER TABLE conversations ADD COLUMN view_start INTEGER",
            "ALTER TABLE conversations ADD COLUMN view_pin INTEGER",
        ),
    ),
    # an image goes with the last message that uses it, however that message goes
    Migration(
        "images-follow-their-messages",
        (
            """
            CREATE TRIGGER images_follow_their_messages AFTER DELETE ON message_images BEGIN
                DELETE FROM images WHERE sha256 = OLD.image_sha256
                    AND NOT EXISTS (SELECT 1 FROM message_images WHERE image_sha256 = OLD.image_sha256);
            END
            """,
            "DELETE FROM images WHERE sha256 NOT IN (SELECT image_sha256 FROM message_images)",
        ),
    ),
    # whether an answer's Telegram messages show its final form (0 while a cursor or a Stop button may be left in
    # them, which recovery after a crash or a hurried shutdown repairs: bot/output/recovery.py)
    Migration("answers-settled", ("ALTER TABLE messages ADD COLUMN settled INTEGER NOT NULL DEFAULT 1",)),
    # a conversation's own system prompt (/persona), kept apart from its messages so that /reset keeps it
    Migration(
        "personas",
        (
            """
            CREATE TABLE personas (
                chat_id INTEGER NOT NULL,
                thread_id INTEGER NOT NULL DEFAULT 0,
                text TEXT NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (chat_id, thread_id)
            )
            """,
        ),
    ),
    # images are kept as the bot's own copies, no larger than the model can use (bounded = 1: made by its file
    # reader, safe to decode in the bot's process; pages and frames always were), and pruned, oldest first, past
    # the limits on stored images: a message counts the images it lost, so its text stays (bot/history/images.py)
    Migration(
        "bounded-and-pruned-images",
        (
            "ALTER TABLE images ADD COLUMN bounded INTEGER NOT NULL DEFAULT 0",
            "UPDATE images SET bounded = 1 WHERE file_unique_id IS NULL",
            "ALTER TABLE messages ADD COLUMN images_pruned INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX images_by_size ON images (size)",
        ),
    ),
    # a question asked aloud keeps what the speech model heard; its text is the question as the model read it
    # (the caption, then the transcript): NULL for typed questions
    Migration("heard-questions", ("ALTER TABLE messages ADD COLUMN heard TEXT",)),
)


async def upgrade(connection: aiosqlite.Connection, path: Path, version: int) -> None:
    """Applies the migrations the database at ``path`` lacks (``version``: its ``user_version``), then writes to
    it once; raises HistoryError for a database of a newer phi3bot, or one that cannot be brought up to date or
    written (the transaction leaves the schema as it was)."""
    try:
        await _migrate(connection, path, version)
        await _can_write(connection)
    except sqlite3.Error as error:  # a read-only or full disk
        raise HistoryError(
            f"{path} could not be brought up to date or written ({error}); it is unchanged. Check that "
            "DATABASE_PATH can be written."
        ) from error


async def _migrate(connection: aiosqlite.Connection, path: Path, version: int) -> None:
    applied = await _recorded_migrations(connection, version) if version <= len(MIGRATIONS) else set()
    unknown = sorted(applied - {migration.name for migration in MIGRATIONS})
    if version > len(MIGRATIONS) or unknown:
        raise HistoryError(
            f"{path} was written by a newer phi3bot (schema {', '.join(unknown) or version}, this one "
            f"knows {len(MIGRATIONS)} migrations). Upgrade phi3bot or use another DATABASE_PATH."
        )
    for migration in MIGRATIONS:
        if migration.name in applied:
            continue
        async with transaction(connection):
            for statement in migration.statements:
                await connection.execute(statement)
            await connection.execute(
                "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (migration.name, time.time())
            )
            await connection.execute(f"PRAGMA user_version = {len(applied) + 1}")
        applied.add(migration.name)
        log.info("history database %s: migration %s applied", path, migration.name)


async def _recorded_migrations(connection: aiosqlite.Connection, version: int) -> set[str]:
    """The names of the migrations applied (read only, for a database that records them); a database from
    before the names is adopted with the first ``version``."""
    async with connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ) as cursor:
        recorded = await cursor.fetchone() is not None
    if recorded:
        async with connection.execute("SELECT name FROM schema_migrations") as cursor:
            return {str(row[0]) for row in await cursor.fetchall()}
    adopted = MIGRATIONS[:version]
    async with transaction(connection):
        await connection.execute(RECORD)
        await connection.executemany(
            "INSERT INTO schema_migrations (name, applied_at) VALUES (?, NULL)", [(m.name,) for m in adopted]
        )
    return {migration.name for migration in adopted}


async def _can_write(connection: aiosqlite.Connection) -> None:
    """A database left read-only (created by another user, say) fails here, at the start, rather than with
    the first answer it should record: writing the version it has again changes nothing."""
    async with transaction(connection):
        async with connection.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        await connection.execute(f"PRAGMA user_version = {int(row[0]) if row else 0}")
