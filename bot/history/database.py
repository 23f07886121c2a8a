"""The history's SQLite file: how it is opened, and how it is written.

WAL mode lets readers proceed while a write commits; every multi-row write happens inside one ``BEGIN IMMEDIATE``
transaction, so a crash or ``kill -9`` leaves either the whole write (a message with its image links, a migration
with the row that records it) or nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

SETTINGS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
)


class HistoryError(Exception):
    """The database cannot be used; the message says which file and what to do."""


async def open_database(path: Path) -> tuple[aiosqlite.Connection, int]:
    """The connection, with the settings every use of it needs, and the ``user_version`` of its file (how many
    migrations were applied: bot/history/schema.py); raises HistoryError for a file that cannot be opened or is
    not a database."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Tried plainly first: aiosqlite's thread, started for a file that cannot be opened, still has a reply
        # to deliver when a failed start has already closed the event loop, and prints a traceback.
        await asyncio.to_thread(_can_open, path)
        connection = await aiosqlite.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as error:
        raise HistoryError(f"Cannot open the history database {path}: {error}. Check DATABASE_PATH.") from error
    try:
        for setting in SETTINGS:
            await connection.execute(setting)
        async with connection.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
    except sqlite3.DatabaseError as error:
        await connection.close()
        raise HistoryError(
            f"{path} is not a usable SQLite database ({error}). Move it away to start a new history, "
            "or check DATABASE_PATH."
        ) from error
    except BaseException:
        await connection.close()
        raise
    return connection, int(row[0]) if row else 0


def _can_open(path: Path) -> None:
    """Raises sqlite3.Error when ``path`` cannot be opened as a database (a directory, no permission)."""
    sqlite3.connect(path).close()


@asynccontextmanager
async def transaction(connection: aiosqlite.Connection) -> AsyncIterator[None]:
    """``BEGIN IMMEDIATE`` to ``COMMIT``, rolled back on any error; the caller keeps other tasks' statements out
    of it (the store's lock)."""
    await connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if connection.in_transaction:  # SQLite rolls back by itself after some errors, a full disk among them
            await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")
