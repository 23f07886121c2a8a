"""The history database's schema as named migrations, applied in order and recorded by name.

Each migration runs in one transaction with the row that records it, so a crash during an upgrade leaves the
previous schema intact.  A name stays for as long as databases exist that the migration ran on: never edit
or rename a released migration, add a new one.  ``PRAGMA user_version`` also counts the migrations applied,
because phi3bot releases before the names read only that count (and refuse a database with a higher one).
"""

from __future__ import annotations

from dataclasses import dataclass


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
    # the limits on stored images: a message counts the images it lost, so its text stays (bot/history/store.py)
    Migration(
        "bounded-and-pruned-images",
        (
            "ALTER TABLE images ADD COLUMN bounded INTEGER NOT NULL DEFAULT 0",
            "UPDATE images SET bounded = 1 WHERE file_unique_id IS NULL",
            "ALTER TABLE messages ADD COLUMN images_pruned INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX images_by_size ON images (size)",
        ),
    ),
)
