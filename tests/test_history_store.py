"""History in SQLite: migrations, isolation between chats and topics, images stored once, nothing half-written."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.history import ConversationKey, HistoryError, HistoryStore, NewImage, StoredImageLimits
from bot.history.schema import MIGRATIONS
from bot.history.store import STATUSES
from devkit.harness import stored_messages
from engine.context_policy import Window


def image(payload: bytes, unique: str | None = None) -> NewImage:
    return NewImage(
        data=payload, sha256=hashlib.sha256(payload).hexdigest(), file_unique_id=unique, mime_type="image/png"
    )


async def answered(
    store: HistoryStore, key: ConversationKey, question: str, answer: str, *, images: list[NewImage] | None = None
) -> tuple[int, int]:
    """A question and its complete answer, stored as the bot stores them; returns both ids."""
    asked, answering = await store.start_exchange(key, question, images=images or [])
    await store.update_assistant_message(answering, answer, telegram_message_ids=[], status="complete")
    return asked, answering


async def test_migrates_reopens_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "history.sqlite3"
    store = await HistoryStore.open(path)
    key = ConversationKey(1)
    _, answer = await store.start_exchange(
        key, "hello", images=[image(b"png-1", "u1")], telegram_message_id=10, user_id=7
    )
    await store.update_assistant_message(answer, "hi there", telegram_message_ids=[11, 12], status="complete")
    await store.close()
    async with await HistoryStore.open(path) as reopened:
        messages = await stored_messages(reopened, key)
        assert [(m.role, m.text, m.status) for m in messages] == [
            ("user", "hello", "complete"),
            ("assistant", "hi there", "complete"),
        ]
        assert messages[0].images[0].data == b"png-1" and messages[1].telegram_message_ids == (11, 12)
        assert intact(path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_refuses_newer_schema_and_non_databases(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as raw:
        raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(HistoryError, match="newer phi3bot"):
        await HistoryStore.open(newer)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database, just text " * 100)
    with pytest.raises(HistoryError, match="not a usable SQLite database"):
        await HistoryStore.open(garbage)


async def test_order_and_isolation_between_chats_and_topics(tmp_path: Path) -> None:
    async with await HistoryStore.open(tmp_path / "h.sqlite3") as store:
        main, topic, other = ConversationKey(-100, 0), ConversationKey(-100, 42), ConversationKey(5)
        for index in range(6):
            await store.add_user_message(main, f"main {index}")
        await store.add_user_message(topic, "topic only", images=[image(b"topic-image")])
        await store.add_user_message(other, "other chat")
        assert [row.text for row in (await store.outline(main)).rows] == [f"main {i}" for i in range(6)]
        [only] = await stored_messages(store, topic)
        assert only.text == "topic only" and [i.data for i in only.images] == [b"topic-image"]
        assert [m.text for m in await stored_messages(store, other)] == ["other chat"]
        assert await store.recent_conversations(0) == [other, topic, main], "the most recent first"
        assert await store.recent_conversations(time.time() + 60) == []


async def test_the_models_view_is_stored_and_outlined_without_image_bytes(tmp_path: Path) -> None:
    async with await HistoryStore.open(tmp_path / "h.sqlite3") as store:
        key = ConversationKey(3)
        ids = [*await answered(store, key, "photo?", "a photo", images=[image(b"p1")])]
        for turn in range(3):
            ids.extend(await answered(store, key, f"q{turn}", f"a{turn}"))
        asked, writing = await store.start_exchange(key, "q3")  # its answer, being written, is in no view yet
        await store.set_tokens({ids[0]: 800, ids[1]: 7, ids[2]: 5})
        outline = await store.outline(key)
        assert outline.window == Window() and [row.id for row in outline.rows] == [*ids, asked]
        assert writing not in [row.id for row in outline.rows]
        assert [(row.tokens, row.images) for row in outline.rows[:3]] == [(800, 1), (7, 0), (5, 0)]
        assert outline.rows[3].tokens is None, "not counted yet"
        await store.set_window(key, Window(start=ids[6], pin=ids[0]))
        outline = await store.outline(key)
        assert outline.window == Window(ids[6], ids[0])
        assert [row.id for row in outline.rows] == [*ids, asked], "the pinned exchange onwards, then the start"
        await store.set_window(key, Window(start=ids[6]))
        assert [row.id for row in (await store.outline(key)).rows] == [*ids[6:], asked]
        assert [m.text for m in await store.messages([ids[0], ids[7]])] == ["photo?", "a2"]


async def test_a_photo_kept_for_the_next_question_is_stored_with_its_token_count(tmp_path: Path) -> None:
    async with await HistoryStore.open(tmp_path / "h.sqlite3") as store:
        key = ConversationKey(4)
        kept = await store.add_user_message(key, "[a photo]", images=[image(b"k")], telegram_message_id=3, tokens=800)
        [row] = (await store.outline(key)).rows
        assert (row.id, row.tokens, row.images) == (kept, 800, 1)


async def test_a_database_of_the_first_schema_is_migrated_and_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with at_schema(path, 1) as raw:
        raw.execute("INSERT INTO conversations (chat_id, thread_id, created_at, updated_at) VALUES (9, 0, 1, 1)")
        raw.execute("INSERT INTO messages (conversation_id, role, text, created_at) VALUES (1, 'user', 'old', 1)")
    async with await HistoryStore.open(path) as store:
        outline = await store.outline(ConversationKey(9))
        assert outline.window == Window() and [(row.text, row.tokens) for row in outline.rows] == [("old", None)]


def intact(path: Path) -> bool:
    """SQLite's own check of the whole file, through a connection of its own (the store's stays open)."""
    with contextlib.closing(sqlite3.connect(path)) as raw:
        return raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@contextlib.contextmanager
def at_schema(path: Path, count: int) -> Iterator[sqlite3.Connection]:
    """A database as a phi3bot from before the migrations' names left it after the first ``count``: the
    statements, and the count in ``user_version``; committed when the block ends."""
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        for migration in MIGRATIONS[:count]:
            for statement in migration.statements:
                raw.execute(statement)
        raw.execute(f"PRAGMA user_version = {count}")
        yield raw


@pytest.mark.parametrize("before", [migration.name for migration in MIGRATIONS[:-1]])
async def test_each_migration_upgrades_the_schema_before_it_and_keeps_the_data(tmp_path: Path, before: str) -> None:
    count = [migration.name for migration in MIGRATIONS].index(before) + 1
    path = tmp_path / "old.sqlite3"
    with at_schema(path, count) as raw:
        raw.execute("INSERT INTO conversations (chat_id, thread_id, created_at, updated_at) VALUES (7, 3, 1, 1)")
        raw.execute("INSERT INTO messages (conversation_id, role, text, created_at) VALUES (1, 'user', 'q', 1)")
        raw.execute("INSERT INTO images (sha256, data, size, created_at) VALUES ('i', x'01', 1, 1)")
        raw.execute("INSERT INTO message_images (message_id, image_sha256, position) VALUES (1, 'i', 0)")
        raw.execute(
            "INSERT INTO messages (conversation_id, role, text, status, created_at) VALUES (1, 'assistant', 'a', "
            "'complete', 2)"
        )
    async with await HistoryStore.open(path) as store:
        messages = await stored_messages(store, ConversationKey(7, 3))
        assert [(m.role, m.text, m.status) for m in messages] == [
            ("user", "q", "complete"),
            ("assistant", "a", "complete"),
        ]
        assert [image.data for image in messages[0].images] == [b"\x01"]
        assert intact(path)
    with sqlite3.connect(path) as raw:
        recorded = raw.execute("SELECT name, applied_at IS NULL FROM schema_migrations ORDER BY rowid").fetchall()
        assert recorded == [(migration.name, index < count) for index, migration in enumerate(MIGRATIONS)]
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS), "older releases read the count"
    async with await HistoryStore.open(path) as store:  # nothing is applied twice
        assert len(await stored_messages(store, ConversationKey(7, 3))) == 2


async def test_a_migration_this_release_does_not_know_is_refused_and_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    await (await HistoryStore.open(path)).close()
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        raw.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('from-the-future', 1)")
    with pytest.raises(HistoryError, match=r"newer phi3bot.*from-the-future"):
        await HistoryStore.open(path)
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert len(raw.execute("SELECT name FROM schema_migrations").fetchall()) == len(MIGRATIONS) + 1
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_the_schema_allows_exactly_the_statuses_the_code_stores(tmp_path: Path) -> None:
    with at_schema(tmp_path / "h.sqlite3", len(MIGRATIONS)) as raw:
        [table] = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()
    found = re.search(r"status IN \(([^)]*)\)", table)
    assert found is not None and sorted(v.strip(" '") for v in found.group(1).split(",")) == sorted(STATUSES)


async def test_images_are_stored_once_and_found_by_file_unique_id(tmp_path: Path) -> None:
    async with await HistoryStore.open(tmp_path / "h.sqlite3") as store:
        shared = image(b"same bytes", "AQAD-unique")
        await store.add_user_message(ConversationKey(1), "a", images=[shared])
        await store.add_user_message(ConversationKey(2), "b", images=[shared, image(b"other")])
        stats = await store.stats()
        assert stats.images == 2 and stats.messages == 2
        found = await store.image_by_file_unique_id("AQAD-unique")
        assert found is not None and found.data == b"same bytes"
        assert await store.image_by_file_unique_id("missing") is None


async def test_reset_deletes_one_conversation_and_orphan_images_only(tmp_path: Path) -> None:
    async with await HistoryStore.open(tmp_path / "h.sqlite3") as store:
        shared, own = image(b"shared"), image(b"own")
        await answered(store, ConversationKey(1), "a", "answer", images=[shared, own])
        await store.add_user_message(ConversationKey(2), "b", images=[shared])
        assert await store.reset(ConversationKey(1)) == 2
        assert await stored_messages(store, ConversationKey(1)) == []
        [kept] = await stored_messages(store, ConversationKey(2))
        assert [i.data for i in kept.images] == [b"shared"]
        assert (await store.stats()).images == 1


async def test_a_failing_write_leaves_no_half_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with await HistoryStore.open(tmp_path / "h.sqlite3") as store:
        real_execute = store._db.execute

        def failing_execute(sql: str, *args: object) -> object:
            if sql.startswith("INSERT INTO message_images"):  # after the image and message rows went in
                raise sqlite3.OperationalError("disk I/O error")
            return real_execute(sql, *args)

        monkeypatch.setattr(store._db, "execute", failing_execute)
        with pytest.raises(sqlite3.OperationalError):
            await store.add_user_message(ConversationKey(1), "half", images=[image(b"x")])
        monkeypatch.undo()
        assert await stored_messages(store, ConversationKey(1)) == []
        assert (await store.stats()).images == 0
        _, answer = await store.start_exchange(ConversationKey(1), "x")
        with pytest.raises(ValueError, match="status"):
            await store.update_assistant_message(answer, "x", telegram_message_ids=[], status="weird")  # type: ignore[arg-type]


async def test_fifty_concurrent_conversations_all_land(tmp_path: Path) -> None:
    async with await HistoryStore.open(tmp_path / "h.sqlite3") as store:

        async def chat(number: int) -> None:
            for turn in range(3):
                await answered(
                    store, ConversationKey(number), f"q{turn}", f"a{turn}", images=[image(f"{number}".encode())]
                )

        await asyncio.gather(*(chat(number) for number in range(50)))
        for number in range(50):
            texts = [m.text for m in await stored_messages(store, ConversationKey(number))]
            assert texts == ["q0", "a0", "q1", "a1", "q2", "a2"]
        assert (await store.stats()).messages == 300


WRITER = """
import asyncio, hashlib, sys
from pathlib import Path
from bot.history import ConversationKey, HistoryStore, NewImage

async def main():
    store = await HistoryStore.open(Path(sys.argv[1]))
    print("ready", flush=True)
    n = 0
    while True:
        data = b"img-%d" % n + bytes(50_000)
        img = NewImage(data=data, sha256=hashlib.sha256(data).hexdigest())
        other = NewImage(data=data + b"2", sha256=hashlib.sha256(data + b"2").hexdigest())
        await store.add_user_message(ConversationKey(n % 7), "q%d" % n, images=[img, other])
        n += 1

asyncio.run(main())
"""


def test_kill_9_during_writes_leaves_a_consistent_database(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        messages = raw.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        assert messages > 5, "the writer got some work done before the kill"
        links = raw.execute("SELECT COUNT(*) FROM message_images").fetchone()[0]
        assert links == 2 * messages, "every message has both of its images or does not exist"
        orphans = raw.execute(
            "SELECT COUNT(*) FROM message_images WHERE image_sha256 NOT IN (SELECT sha256 FROM images)"
        ).fetchone()[0]
        assert orphans == 0


async def test_an_image_goes_with_the_last_message_that_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    async with await HistoryStore.open(path) as store:
        first = await store.add_user_message(ConversationKey(1), "a", images=[image(b"shared"), image(b"own")])
        await store.add_user_message(ConversationKey(2), "b", images=[image(b"shared")])
    with sqlite3.connect(path) as raw:  # a message going some other way than /reset
        raw.execute("PRAGMA foreign_keys = ON")
        raw.execute("DELETE FROM messages WHERE id = ?", (first,))
        assert [row[0] for row in raw.execute("SELECT data FROM images")] == [b"shared"]
        raw.execute("DELETE FROM conversations")
        assert raw.execute("SELECT COUNT(*) FROM images").fetchone() == (0,)


async def test_images_left_without_messages_by_an_older_version_are_removed_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with at_schema(path, 2) as raw:
        raw.execute("INSERT INTO images (sha256, data, size, created_at) VALUES ('orphan', x'00', 1, 0)")
    async with await HistoryStore.open(path) as store:
        assert (await store.stats()).images == 0


async def test_answers_to_repair_are_returned_at_each_start_until_settled(tmp_path: Path) -> None:
    """Cut by a crash (still streaming) or left unfinished by a hurried shutdown (final status, not settled)."""
    async with await HistoryStore.open(tmp_path / "h.sqlite3") as store:
        key = ConversationKey(5, 3)
        _, cut = await store.start_exchange(key, "q1", telegram_message_id=1)
        await store.update_assistant_message(cut, "half", telegram_message_ids=[10, 11, 12], status="streaming")
        _, hurried = await store.start_exchange(key, "q2", telegram_message_id=2)
        await store.update_assistant_message(hurried, "all", telegram_message_ids=[13], status="complete")
        _, done = await store.start_exchange(key, "q3", telegram_message_id=3)
        await store.update_assistant_message(done, "shown", telegram_message_ids=[14], status="complete")
        await store.settle(done)

        first = await store.mark_interrupted()
        assert [(a.message_id, a.chat_id, a.thread_id, a.telegram_message_ids, a.text, a.status) for a in first] == [
            (cut, 5, 3, (10, 11, 12), "half", "streaming"),
            (hurried, 5, 3, (13,), "all", "complete"),
        ]
        assert [m.status for m in await stored_messages(store, key)][1::2] == ["cancelled", "complete", "complete"]
        await store.settle(cut)
        assert [a.message_id for a in await store.mark_interrupted()] == [hurried], "until settled"


async def test_a_replaced_answer_leaves_only_the_new_one_and_a_second_replacement_finds_it_gone(
    tmp_path: Path,
) -> None:
    async with await HistoryStore.open(tmp_path / "history.sqlite3") as store:
        key = ConversationKey(5)
        question_id, _ = await store.start_exchange(key, "what is it?", images=[image(b"png-q")], user_id=7)
        assert await store.last_exchange(key) is None, "an answer still being written is not finished"
        await store.update_assistant_message(question_id + 1, "a cat", telegram_message_ids=[3], status="complete")
        exchange = await store.last_exchange(key)
        assert exchange is not None and exchange.question.id == question_id and exchange.answer.text == "a cat"
        new_answer = await store.replace_answer(exchange)
        assert new_answer is not None and await store.replace_answer(exchange) is None, "replaced once only"
        messages = await stored_messages(store, key)
        assert [(m.role, m.text, m.status) for m in messages] == [
            ("user", "what is it?", "complete"),
            ("assistant", "", "streaming"),
        ]
        assert messages[0].images[0].data == b"png-q", "the question keeps its image"
        await store.add_user_message(key, "", images=[image(b"png-2")])
        assert await store.last_exchange(key) is None, "a photo kept after the answer: nothing to retry"


async def test_a_persona_survives_a_reset_and_follows_its_group(tmp_path: Path) -> None:
    async with await HistoryStore.open(tmp_path / "history.sqlite3") as store:
        group, topic = ConversationKey(-5), ConversationKey(-5, 9)
        await store.set_persona(group, "terse")
        await store.set_persona(topic, "verbose")
        await store.add_user_message(group, "hello")
        await store.reset(group)
        assert await store.persona(group) == "terse"
        assert await store.move_chat(-5, -1005) == 0, "no conversation left to move"
        assert await store.has_chat(-1005) and not await store.has_chat(-5)
        assert [await store.persona(ConversationKey(-1005, t)) for t in (0, 9)] == ["terse", "verbose"]
        await store.set_persona(ConversationKey(-1005), None)
        assert await store.persona(ConversationKey(-1005)) is None


async def test_images_stored_as_sent_before_copies_are_told_apart_from_pages_and_frames(tmp_path: Path) -> None:
    """Before the bot kept copies, a photo was stored as sent (with its Telegram file id) and may be a 20 MB
    original, which the bot's process must not decode; pages and frames were always the bot's own."""
    path = tmp_path / "old.sqlite3"
    before_copies = [migration.name for migration in MIGRATIONS].index("bounded-and-pruned-images")
    with at_schema(path, before_copies) as raw:
        raw.execute("INSERT INTO conversations (chat_id, thread_id, created_at, updated_at) VALUES (7, 0, 1, 1)")
        raw.execute("INSERT INTO messages (conversation_id, role, text, created_at) VALUES (1, 'user', 'q', 1)")
        for position, (sha, unique) in enumerate((("photo", "AgAD"), ("page", None))):
            raw.execute(
                "INSERT INTO images (sha256, file_unique_id, data, size, created_at) VALUES (?, ?, x'01', 1, 1)",
                (sha, unique),
            )
            raw.execute("INSERT INTO message_images VALUES (1, ?, ?)", (sha, position))
    async with await HistoryStore.open(path) as store:
        [question] = await stored_messages(store, ConversationKey(7))
        assert [(i.sha256, i.bounded) for i in question.images] == [("photo", False), ("page", True)]
        assert question.images_pruned == 0
        found = await store.image_by_file_unique_id("AgAD")
        assert found is not None and not found.bounded
        copy = image(b"the copy")
        await store.replace_image("photo", copy)
        [question] = await stored_messages(store, ConversationKey(7))
        assert [i.data for i in question.images] == [b"the copy", b"\x01"], "in its place, in every message"
        found = await store.image_by_file_unique_id("AgAD")
        assert found is not None and found.sha256 == copy.sha256, "with its Telegram file id"
        assert (await store.stats()).images == 2


def limited(store: HistoryStore, per_chat: int = 100, total_bytes: int = 10**9) -> HistoryStore:
    store.limit_images(StoredImageLimits(per_chat, total_bytes))
    return store


async def test_past_a_chats_limit_the_oldest_messages_lose_their_images_and_keep_their_text(tmp_path: Path) -> None:
    async with await HistoryStore.open(tmp_path / "h.sqlite3") as store:
        limited(store, per_chat=3)
        group, topic, other = ConversationKey(-5), ConversationKey(-5, 9), ConversationKey(8)
        shared = image(b"shared")
        first, _ = await answered(store, group, "album", "three", images=[image(b"a"), image(b"b"), shared])
        await store.set_tokens({first: 900})
        await answered(store, other, "the same photo elsewhere", "one", images=[shared])
        await answered(store, topic, "in a topic", "one", images=[image(b"c")])  # the same chat: 4 images
        [album, _] = await stored_messages(store, group)
        assert album.text == "album" and album.images == () and album.images_pruned == 3
        row = (await store.outline(group)).rows[0]
        assert (row.images, row.images_pruned, row.tokens) == (0, 3, None), "counted again without its images"
        [elsewhere, _] = await stored_messages(store, other)
        assert [i.data for i in elsewhere.images] == [b"shared"], "another chat keeps the image it shares"
        assert (await store.stats()).images == 2
        big = [image(bytes([n]) * 10) for n in range(5)]
        newest = await store.add_user_message(topic, "more than the limit at once", images=big)
        [kept] = await store.messages([newest])
        assert len(kept.images) == 5, "the newest message keeps its own images, whatever the limit"


async def test_past_the_total_limit_the_oldest_images_of_any_chat_go_first(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    async with await HistoryStore.open(path) as store:
        limited(store, total_bytes=2500)
        for chat in range(1, 5):
            await answered(store, ConversationKey(chat), f"photo {chat}", "a", images=[image(bytes([chat]) * 1000)])
        assert (await store.stats()).images == 2
        with contextlib.closing(sqlite3.connect(path)) as raw:
            assert raw.execute("SELECT SUM(size) FROM images").fetchone() == (2000,)
        counts = [(await stored_messages(store, ConversationKey(chat)))[0].images_pruned for chat in range(1, 5)]
        assert counts == [1, 1, 0, 0]


async def test_a_write_that_finds_the_disk_full_stores_and_prunes_nothing(tmp_path: Path) -> None:
    async with await HistoryStore.open(tmp_path / "h.sqlite3") as store:
        limited(store, per_chat=1)
        key = ConversationKey(3)
        await answered(store, key, "first photo", "a", images=[image(b"first")])
        async with store._db.execute("PRAGMA page_count") as cursor:
            row = await cursor.fetchone()
        assert row is not None
        await store._db.execute(f"PRAGMA max_page_count = {row[0]}")  # as if the disk were full
        with pytest.raises(sqlite3.OperationalError, match="full"):
            await store.add_user_message(key, "second photo", images=[image(bytes(20_000))])
        [first, _] = await stored_messages(store, key)
        assert [i.data for i in first.images] == [b"first"] and first.images_pruned == 0
        await store._db.execute("PRAGMA max_page_count = 1073741823")
        await store.add_user_message(key, "second photo", images=[image(bytes(20_000))])
        assert (await stored_messages(store, key))[0].images_pruned == 1
