"""Hostile input, Telegram faults and load, through the real bot over HTTP: it keeps serving every other chat,
loses nothing it accepted, and gives no model time to anyone it should not."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from bot import texts
from bot.history import ConversationKey
from bot.output import buttons
from devkit.bot_api_server import FakeBotApi
from devkit.harness import (
    USER,
    RunningBot,
    answering,
    bot_settings,
    photo_bytes,
    press,
    running_bot,
    shown_texts,
    stored_answers,
    stored_messages,
    streaming,
    wait_answers,
)
from devkit.hostile_images import GENERATORS, hostile_images
from engine.conversation import Turn
from engine.engine import Chunk, Event, Finished
from model_store.store import ModelEntry, ModelStore

MIME = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif", "bmp": "image/bmp"}
BYSTANDER = 8


def settled(api: FakeBotApi, chat: int) -> bool:
    """Something was said in the chat and nothing is still streaming (no Stop button, no placeholder)."""
    messages = api.messages(chat)
    return bool(messages) and all(not answering(m) and m.text != texts.PLACEHOLDER for m in messages)


async def test_hostile_files_get_a_kind_reply_while_other_chats_are_served(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    cases = list(hostile_images(len(GENERATORS)))  # one of every kind, then the bomb and the 20 MB file
    users = [2000 + index for index in range(len(cases))]
    allowed = ",".join(str(user) for user in [*users, BYSTANDER])
    settings = bot_settings(api, int4_store[0].root, tmp_path, allowed_user_ids=allowed, max_new_tokens=8)
    async with running_bot(api, settings) as bot:
        api.push_message(BYSTANDER, "Hello, are you there?", user_id=BYSTANDER)
        for user, case in zip(users, cases, strict=True):
            mime = MIME.get(case.name.rsplit(".", 1)[-1], "image/tiff")
            api.push_message(user, document=(case.data, case.name, mime), caption="What is this?", user_id=user)
        for user, case in zip(users, cases, strict=True):
            await api.wait_for(lambda user=user: settled(api, user), 120, f"a reply about {case.kind}")
        await wait_answers(api, BYSTANDER, 1)

        for user, case in zip(users, cases, strict=True):
            [reply] = api.messages(user)
            stored = await stored_messages(bot.services.history, ConversationKey(user))
            answered = bool(api.draft_texts(user))  # answers start as a draft, refusals do not
            if case.expect != "either":
                assert answered == (case.expect == "ok"), f"{case.kind}: {reply.text!r}"
            if answered:
                assert [m.status for m in stored] == ["complete", "complete"], case.kind
            else:
                assert reply.text.endswith(".") and texts.FAILED not in reply.text, f"{case.kind}: {reply.text!r}"
                assert stored == [], f"{case.kind}: a refused file leaves no trace"
        assert bot.services.engine is not None and bot.services.engine.stats.failed == 0


async def test_awkward_text_is_answered_and_stored_exactly(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    questions = {
        3001: "x" * 5000,  # longer than Telegram lets people type; a forwarded or API-made message can be
        3002: "control \x00\x01\x07\x1b[31m characters \u202e reversed \ufeff",
        3003: "مرحبا، ما هذا؟ שלום 👋🏽 👨‍👩‍👧 🇺🇦",
        3004: "<b>not html</b> **not markdown** `code` [x](javascript:alert(1)) & &amp; \\ _ *",
    }
    allowed = ",".join(str(user) for user in [*questions, 3005])
    settings = bot_settings(api, int4_store[0].root, tmp_path, allowed_user_ids=allowed, max_new_tokens=8)
    async with running_bot(api, settings) as bot:
        for user, question in questions.items():
            api.push_message(user, question, user_id=user)
        api.push_message(3005, " \n\t ", user_id=3005)
        for user, question in questions.items():
            await wait_answers(api, user, 1, timeout=120)
            stored = await stored_messages(bot.services.history, ConversationKey(user))
            assert stored[0].text == question and [m.status for m in stored] == ["complete", "complete"]
        await api.wait_for(lambda: api.visible_text(3005) == [texts.EMPTY], 30, "a hint for an empty message")


async def test_a_file_path_on_this_machine_is_never_read(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    """python-telegram-bot reads an existing local file_path instead of downloading: a rogue server could
    make the bot feed its own files (its database, its .env) to the model."""
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(photo_bytes())
    async with running_bot(api, bot_settings(api, int4_store[0].root, tmp_path / "data")) as bot:
        api.push_message(USER, photo=photo_bytes(), caption="What is it?", user_id=USER, file_path=str(secret))
        await api.wait_for(lambda: api.visible_text(USER) == [texts.NOT_DOWNLOADED], 30, "a refusal")
        assert await stored_messages(bot.services.history, ConversationKey(USER)) == []


async def upgrade_mid_answer(api: FakeBotApi, bot: RunningBot, group: int, supergroup: int, member: int) -> str:
    """``member`` asks in ``group`` for a long story; while it streams, Telegram upgrades the group to
    ``supergroup`` and announces it in both chats.  Returns the bot's username, for mentions."""
    username = bot.application.bot.username
    api.push_message(group, f"@{username} tell me a long story", user_id=member)
    await api.wait_for(lambda: any(m.text.endswith("▌") for m in api.messages(group)), 30, "streaming")
    assert bot.services.engine is not None and bot.services.engine.queue.position(ConversationKey(group)) is not None
    api.migrate(group, supergroup)
    api.push_message(group, None, user_id=member, extra={"migrate_to_chat_id": supergroup})
    api.push_message(supergroup, None, user_id=member, extra={"migrate_from_chat_id": group})
    return username


async def test_a_group_upgraded_mid_answer_keeps_its_answer_history_and_access(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    group, supergroup, member = -4242, -1004242, 9  # the member is allowed only through the group
    api.chat_types[group] = "group"
    settings = bot_settings(api, int4_store[0].root, tmp_path, allowed_chat_ids=str(group), max_new_tokens=3000)
    async with running_bot(api, settings, long_answers=True) as bot:
        username = await upgrade_mid_answer(api, bot, group, supergroup, member)
        await stored_answers(bot, ConversationKey(supergroup), 1)
        await api.wait_for(lambda: settled(api, supergroup), 30, "the answer's final text in the supergroup")
        assert "".join(api.visible_text(supergroup)).strip()

        engine = bot.services.engine
        assert engine is not None
        engine.settings = replace(engine.settings, max_new_tokens=40)  # only the first answer needed to be long
        api.push_message(supergroup, f"@{username} and then?", user_id=member)
        await stored_answers(bot, ConversationKey(supergroup), 2)
        stored = await stored_messages(bot.services.history, ConversationKey(supergroup))
        assert [m.text for m in stored if m.role == "user"] == ["tell me a long story", "and then?"]
        assert all(m.status == "complete" for m in stored), [(m.role, m.status, m.text[:40]) for m in stored]
        assert await stored_messages(bot.services.history, ConversationKey(group)) == []


async def test_after_a_group_upgrade_the_running_answer_is_stopped_from_the_supergroup(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    """The answer still runs under the old group's id; Stop and the one-question rule must follow the move."""
    group, supergroup, member = -4343, -1004343, 9
    api.chat_types[group] = "group"
    settings = bot_settings(api, int4_store[0].root, tmp_path, allowed_chat_ids=str(group), max_new_tokens=4000)
    async with running_bot(api, settings, long_answers=True) as bot:
        username = await upgrade_mid_answer(api, bot, group, supergroup, member)
        await api.wait_for(
            lambda: any(m.text.endswith("▌") for m in api.messages(supergroup)), 30, "streaming in the supergroup"
        )
        api.push_message(supergroup, f"@{username} and another one", user_id=member)
        await api.wait_for(lambda: texts.STILL_ANSWERING in api.visible_text(supergroup), 30, "one question at a time")
        streaming = next(m for m in api.messages(supergroup) if m.text.endswith("▌"))
        press(api, streaming, buttons.STOP, user_id=member)
        await stored_answers(bot, ConversationKey(supergroup), 1)
        stored = await stored_messages(bot.services.history, ConversationKey(supergroup))
        assert [m.status for m in stored if m.role == "assistant"] == ["cancelled"]
        engine = bot.services.engine
        assert engine is not None and engine.queue.position(ConversationKey(group)) is None, "the model's slot is free"
        assert not bot.services.answers.busy(ConversationKey(supergroup)), "the moved key ends with the answer"
        assert not bot.services.answers.busy(ConversationKey(group))


async def test_a_migration_announced_in_one_chat_only_moves_nothing(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    """Telegram announces an upgrade in both chats; one announcement alone, in either chat, is a forgery (or
    half of a move still to be confirmed) and must not hand an allowed group's history and access to another
    chat."""
    group, member, forger = -4444, 9, 666
    forger_chat, elsewhere = -1009999, -1008888
    api.chat_types[group] = "group"
    settings = bot_settings(api, int4_store[0].root, tmp_path, allowed_chat_ids=str(group), max_new_tokens=8)
    async with running_bot(api, settings) as bot:
        username = bot.application.bot.username
        api.push_message(group, f"@{username} remember this", user_id=member)
        await wait_answers(api, group, 1)
        api.push_message(
            forger_chat, None, user_id=forger, chat_type="supergroup", extra={"migrate_from_chat_id": group}
        )
        api.push_message(group, None, user_id=member, extra={"migrate_to_chat_id": elsewhere})
        api.push_message(forger_chat, f"@{username} what did they say?", user_id=forger)
        api.push_message(group, f"@{username} still here?", user_id=member)
        await wait_answers(api, group, 2)
        assert api.visible_text(forger_chat) == [], "a stranger in a group of their own hears nothing"
        stored = await stored_messages(bot.services.history, ConversationKey(group))
        assert [m.text for m in stored if m.role == "user"] == ["remember this", "still here?"]
        for chat in (forger_chat, elsewhere):
            assert await stored_messages(bot.services.history, ConversationKey(chat)) == []
            assert chat not in bot.services.access.chats


async def test_in_a_group_only_the_asker_stops_and_only_administrators_reset(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    group, member = -1005151, 9  # the member is allowed through the group
    settings = bot_settings(api, int4_store[0].root, tmp_path, allowed_chat_ids=str(group), max_new_tokens=4000)
    async with running_bot(api, settings, long_answers=True) as bot:
        engine = bot.services.engine
        assert engine is not None
        key = ConversationKey(group)
        username = bot.application.bot.username
        api.push_message(group, f"@{username} tell me a long story", user_id=USER)
        await api.wait_for(lambda: any(m.text.endswith("▌") for m in api.messages(group)), 30, "streaming")
        api.push_message(group, "/stop", user_id=member)
        api.push_message(group, "/reset", user_id=member)
        await api.wait_for(
            lambda: {texts.ASKER_ONLY, texts.GROUP_ADMINS_ONLY} <= set(api.visible_text(group)), 30, "two refusals"
        )
        assert engine.queue.position(key) is not None, "another member's /stop and /reset left the answer running"
        assert api.calls_of("getChatMember", group), "Telegram was asked who administers the group"

        api.push_message(group, "/stop", user_id=USER)
        await stored_answers(bot, key, 1)
        assert [m.status for m in await stored_messages(bot.services.history, key)] == ["complete", "cancelled"]

        administrator = member + 1  # another member: the first one's answer is remembered for a minute
        api.set_member(group, administrator, "administrator")
        api.push_message(group, "/reset", user_id=administrator)
        await api.wait_for(lambda: texts.RESET_DONE in api.visible_text(group), 30, "an administrator's reset")
        assert await stored_messages(bot.services.history, key) == []


async def test_a_crash_of_the_model_is_told_to_the_user_and_others_go_on(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    """The model's process dies mid-answer (an OpenVINO crash, the out-of-memory killer): that answer fails
    with a friendly word, and the next questions are answered by a fresh process."""
    settings = bot_settings(
        api, int4_store[0].root, tmp_path, allowed_user_ids=f"{USER},{BYSTANDER}", max_new_tokens=3000
    )
    async with running_bot(api, settings, long_answers=True) as bot:
        engine = bot.services.engine
        assert engine is not None
        api.push_message(USER, "This one breaks.", user_id=USER)
        deadline = time.monotonic() + 30
        while not streaming(api, USER):
            assert time.monotonic() < deadline, "the answer never started streaming"
            await asyncio.sleep(0.02)
        os.kill(engine.model.pipeline.pid, signal.SIGKILL)
        await wait_answers(api, USER, 1)
        assert api.visible_text(USER)[0].endswith(texts.FAILED), api.visible_text(USER)
        assert "signal" not in api.visible_text(USER)[0], "no internals shown to users"
        engine.settings = replace(engine.settings, max_new_tokens=6)
        api.push_message(BYSTANDER, "Are you still there?", user_id=BYSTANDER)
        await wait_answers(api, BYSTANDER, 1)
        api.push_message(USER, "Try again?", user_id=USER)
        await wait_answers(api, USER, 2)
        stored = await stored_messages(bot.services.history, ConversationKey(USER))
        assert [m.status for m in stored] == ["complete", "failed", "complete", "complete"]
        assert stored[1].text, "what was streamed before the crash is kept"


async def run_load(api: FakeBotApi, store_root: Path, data_dir: Path, chats: int, turns: int) -> None:
    users = [5000 + index for index in range(chats)]
    settings = bot_settings(
        api,
        store_root,
        data_dir,
        allowed_user_ids=",".join(map(str, users)),
        max_new_tokens=6,
        queue_max=chats,
        user_requests_per_minute=turns,
        edit_interval_seconds=0.5,
    )
    process = psutil.Process(os.getpid())
    async with running_bot(api, settings) as bot:

        async def conversation(user: int) -> None:
            for turn in range(turns):
                api.push_message(user, f"turn {turn} from {user}", user_id=user)
                await wait_answers(api, user, turn + 1, timeout=60 + chats * turns * 2)

        await conversation(users[0])  # warm-up, so the memory baseline includes the compiled model
        baseline = process.memory_info().rss
        await asyncio.gather(*(conversation(user) for user in users[1:]))
        grown = process.memory_info().rss - baseline

        positions = []
        for user in users:
            stored = await stored_messages(bot.services.history, ConversationKey(user))
            assert [m.text for m in stored if m.role == "user"] == [f"turn {t} from {user}" for t in range(turns)]
            assert [m.status for m in stored] == ["complete"] * 2 * turns
            shown = [text for text in shown_texts(api, user) if "in line" in text]
            positions += [int(edit.split("#")[1].split()[0]) for edit in shown[:1]]
        assert positions, "with every chat asking at once, some had to wait and were told their place"
        assert max(positions) <= chats - 1 and len(set(positions)) > 1
        assert grown < 400 * 1024 * 1024, f"memory grew by {grown / 2**20:.0f} MB"


async def test_eight_chats_at_once_are_all_answered_in_order(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    await run_load(api, int4_store[0].root, tmp_path, chats=8, turns=2)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_fifty_chats_three_turns_each(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    await run_load(api, int4_store[0].root, tmp_path, chats=50, turns=3)


async def test_one_users_flood_is_refused_without_starving_others(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    settings = bot_settings(
        api, int4_store[0].root, tmp_path, allowed_user_ids=f"{USER},{BYSTANDER}", user_requests_per_minute=2
    )
    async with running_bot(api, settings) as bot:
        for turn in range(2):
            api.push_message(USER, f"question {turn}", user_id=USER)
            await wait_answers(api, USER, turn + 1)
        api.push_message(USER, "and another, right now", user_id=USER)
        await api.wait_for(lambda: texts.TOO_FAST in api.visible_text(USER), 30, "a rate-limit refusal")
        api.push_message(BYSTANDER, "my turn?", user_id=BYSTANDER)
        await wait_answers(api, BYSTANDER, 1)
        stored = await stored_messages(bot.services.history, ConversationKey(USER))
        assert [m.text for m in stored if m.role == "user"] == ["question 0", "question 1"]


async def test_files_sent_with_a_question_get_a_note_and_the_model_never_sees_them(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    """Answered as text-only questions, a real model would make up what the file says (a recording is heard only by
    a speech model, which this bot has not)."""
    video = {"file_id": "video-1", "file_unique_id": "video-1u", "width": 640, "height": 480, "duration": 5}
    voice = {"file_id": "voice-1", "file_unique_id": "voice-1u", "duration": 3}
    audio = {"file_id": "audio-1", "file_unique_id": "audio-1u", "duration": 30}
    async with running_bot(api, bot_settings(api, int4_store[0].root, tmp_path)) as bot:
        archive = api.push_message(
            USER, document=(b"PK\x03\x04", "report.zip", "application/zip"), caption="What does it say?", user_id=USER
        )
        api.push_message(USER, user_id=USER, extra={"voice": voice, "caption": "Transcribe this"})
        api.push_message(USER, user_id=USER, extra={"audio": audio, "caption": "What song is this?"})
        api.push_message(USER, "Summarise it, please.", user_id=USER, reply_to=archive)
        api.push_message(USER, photo=photo_bytes(), caption="Compare these", media_group_id="mixed", user_id=USER)
        api.push_message(USER, user_id=USER, extra={"video": video, "media_group_id": "mixed"})
        await api.wait_for(lambda: len(api.visible_text(USER)) == 5, 30, "five notes")
        notes = [texts.unsupported("file"), texts.NO_SPEECH_MODEL, texts.NO_SPEECH_MODEL, texts.unsupported("file")]
        one_at_a_time = "Please send the video on its own: I can read one PDF, clip or recording per question."
        assert sorted(api.visible_text(USER)) == sorted([*notes, one_at_a_time])
        assert await stored_messages(bot.services.history, ConversationKey(USER)) == []
        assert bot.services.engine is not None and bot.services.engine.queue.served == 0


async def test_an_answer_without_words_says_so_and_is_stored_as_failed(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bot(api, bot_settings(api, int4_store[0].root, tmp_path)) as bot:
        engine = bot.services.engine
        assert engine is not None
        real_ask = engine.ask

        async def wordless(
            key: ConversationKey, past: Sequence[Turn], question: Turn, **options: Any
        ) -> AsyncIterator[Event]:
            """The real model answers; its words are dropped, as if it had written only a line break."""
            async for event in real_ask(key, past, question, **options):
                if isinstance(event, Finished):
                    yield replace(event, text="\n")
                elif not isinstance(event, Chunk):
                    yield event

        monkeypatch.setattr(engine, "ask", wordless)
        api.push_message(USER, "Say nothing at all.", user_id=USER)
        await wait_answers(api, USER, 1)
        assert api.visible_text(USER) == ["⚠️ " + texts.NO_ANSWER]
        stored = await stored_messages(bot.services.history, ConversationKey(USER))
        assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "failed")]


async def test_a_full_disk_before_the_answer_is_told_and_frees_the_model_at_once(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    async with running_bot(api, bot_settings(api, int4_store[0].root, tmp_path)) as bot:
        history, engine = bot.services.history, bot.services.engine
        assert engine is not None
        # SQLite's page limit on the bot's own connection: its next growing write fails as on a full disk.
        async with history._db.execute("PRAGMA page_count") as cursor:
            row = await cursor.fetchone()
        assert row is not None
        await history._db.execute(f"PRAGMA max_page_count = {row[0]}")
        api.push_message(USER, "A question too long to fit on this disk. " * 200, user_id=USER)
        await api.wait_for(lambda: api.visible_text(USER) == [texts.NOT_STORED], 30, "a clear reply")
        assert engine.queue.position(ConversationKey(USER)) is None, "the model's slot is free at once"
        assert await stored_messages(history, ConversationKey(USER)) == []
        await history._db.execute("PRAGMA max_page_count = 1073741823")
        api.push_message(USER, "And now?", user_id=USER)
        await wait_answers(api, USER, 2)
