"""Voice messages and audio files asked over HTTP, through the real bot, heard by the tiny Whisper model beside the
tiny vision model: after a photo, in reply to one, in a group, as an audio file or document; hostile and overlong
recordings; a bot without a speech model; an admin converting one from the chat."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from telegram import Message

from bot import texts
from bot.admission.answers_in_progress import AnswerInProgress
from bot.answers.answer_stream import AnswerStream, StoredExchange
from bot.answers.asking import Asking
from bot.history import ConversationKey, HistoryStore
from bot.output import buttons
from devkit.bot_api_server import FakeBotApi
from devkit.harness import (
    ADMIN,
    STRANGER,
    USER,
    RunningBot,
    bot_settings,
    finished,
    photo_bytes,
    press,
    running_bot,
    stored_messages,
    wait_answers,
)
from devkit.sound_files import encoded, voice
from engine.conversation import Turn
from engine.engine import Engine, Event, Finished, Heard, Started
from engine.pipeline_protocol import Speech
from model_store.layout import SPEECH
from model_store.store import ModelEntry, ModelStore

CHAT = USER
GROUP = -100888
HEARD = re.compile(r"^🎤 (?P<heard>.+?)\n\n", re.DOTALL)


@pytest.fixture
async def bot(api: FakeBotApi, voice_store: Path, tmp_path: Path) -> AsyncIterator[RunningBot]:
    settings = bot_settings(api, voice_store, tmp_path, user_requests_per_minute=600)
    async with running_bot(api, settings) as running:
        yield running


def _heard_above(text: str) -> str:
    """What an answer shows it heard, above its words."""
    shown = HEARD.match(text)
    assert shown is not None, text
    return shown["heard"]


async def test_a_voice_note_after_a_photo_is_heard_shown_above_its_answer_and_stored_as_heard(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(CHAT, photo=photo_bytes((40, 160, 90)), user_id=USER)
    await api.wait_for(lambda: bool(api.visible_text(CHAT)), 20, "the photo is kept")
    api.push_media(CHAT, "voice", voice(3.0), duration=3, user_id=USER)
    await wait_answers(api, CHAT, 1)
    answer = api.messages(CHAT)[-1]
    heard = _heard_above(answer.text)
    assert any(draft.startswith(f"🎤 {heard}") for draft in api.draft_texts(CHAT)), "the draft showed it too"
    [photo, question, stored_answer] = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert len(photo.images) == 1 and question.heard == heard and question.text == heard
    assert not question.images, "the photo in view was the kept one"
    assert not stored_answer.text.startswith("🎤"), "the answer is stored without what was heard above it"

    engine = bot.services.engine
    assert isinstance(engine, Engine) and engine.stats.replays == 0, "the kept photo was read while it was spoken"
    press(api, answer, buttons.RETRY, USER)  # answered again below what was heard
    await api.wait_for(lambda: len([m for m in api.messages(CHAT) if finished(m)]) >= 2, 60, "the retried answer")
    assert _heard_above(api.messages(CHAT)[-1].text) == heard

    read_again = engine.stats.replays
    api.push_message(CHAT, "And what colour is it?", user_id=USER)  # a typed follow-up, the voice note in view
    await wait_answers(api, CHAT, 3)
    stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert [m.heard for m in stored[-2:]] == [None, None] and not api.messages(CHAT)[-1].text.startswith("🎤")
    assert engine.stats.replays == read_again, "the follow-up reads its question only: the history is what was read"


async def test_in_a_group_a_voice_note_counts_when_it_replies_to_a_photo_the_bot_answered(bot: RunningBot) -> None:
    api = bot.api
    photo = api.push_message(
        GROUP, photo=photo_bytes(), caption="@phi3_test_bot what is this?", user_id=USER, chat_type="supergroup"
    )
    await wait_answers(api, GROUP, 1)
    other = api.push_message(GROUP, "lunch anyone?", user_id=USER, chat_type="supergroup")
    api.push_media(GROUP, "voice", voice(2.0), duration=2, user_id=USER, chat_type="supergroup")  # to the group
    api.push_media(GROUP, "voice", voice(2.0), duration=2, user_id=USER, reply_to=other, chat_type="supergroup")
    api.push_media(GROUP, "voice", voice(2.0), duration=2, user_id=STRANGER, reply_to=photo, chat_type="supergroup")
    api.push_media(GROUP, "voice", voice(3.0), duration=3, user_id=USER, reply_to=photo, chat_type="supergroup")
    await wait_answers(api, GROUP, 2)
    assert len([m for m in api.messages(GROUP) if m.text.startswith("🎤")]) == 1, "only the member's reply to the photo"
    stored = await stored_messages(bot.services.history, ConversationKey(GROUP))
    assert [m.role for m in stored] == ["user", "assistant"] * 2
    assert stored[2].heard and stored[2].images == stored[0].images, "it asks about the photo it replies to"

    answer = api.messages(GROUP)[-1]
    api.push_media(
        GROUP, "voice", voice(2.0), duration=2, user_id=USER, reply_to=api.bot_message_dict(GROUP, answer.message_id)
    )
    await wait_answers(api, GROUP, 3)  # a reply to the bot counts as well
    assert len(await stored_messages(bot.services.history, ConversationKey(GROUP))) == 6


async def test_an_audio_file_and_audio_sent_as_a_document_are_heard_and_a_question_can_reply_to_one(
    bot: RunningBot,
) -> None:
    api = bot.api
    api.push_media(CHAT, "audio", voice(2.0, "mp3"), duration=2, user_id=USER)
    await wait_answers(api, CHAT, 1)
    api.push_message(CHAT, document=(voice(2.0, "m4a"), "memo.m4a", "audio/mp4"), caption="Briefly:", user_id=USER)
    await wait_answers(api, CHAT, 2)
    recording = api.push_message(CHAT, document=(voice(2.0, "flac"), "memo.flac", "audio/flac"), user_id=USER)
    await wait_answers(api, CHAT, 3)
    api.push_message(CHAT, "Say that again in other words.", reply_to=recording, user_id=USER)
    await wait_answers(api, CHAT, 4)
    stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    questions = [m for m in stored if m.role == "user"]
    assert all(q.heard for q in questions), [q.text for q in questions]
    assert questions[1].text == f"Briefly:\n{questions[1].heard}", "the caption comes first, then what was heard"
    assert questions[3].text == f"Say that again in other words.\n{questions[3].heard}"


@pytest.mark.parametrize(
    ("recording", "duration", "reply"),
    [
        (voice(2.0), 3_600, "That recording is 1:00:00 long; I can listen to up to 3:00."),
        (encoded(np.zeros(48000, np.float32)), 1, "That recording is silent"),
        (voice(2.0)[:400], 2, "I couldn't read that recording"),
        (photo_bytes(), 2, "I couldn't hear anything in that file"),
    ],
    ids=["announced too long", "silence", "cut short", "a photo"],
)
async def test_hostile_recordings_get_a_kind_reply_and_leave_no_trace(
    bot: RunningBot, recording: bytes, duration: int, reply: str
) -> None:
    api = bot.api
    api.push_media(CHAT, "voice", recording, duration=duration, user_id=USER)
    await api.wait_for(lambda: bool(api.visible_text(CHAT)), 30, "a reply")
    assert api.visible_text(CHAT)[0].startswith(reply), api.visible_text(CHAT)
    assert await stored_messages(bot.services.history, ConversationKey(CHAT)) == []
    if duration > 3_000:
        assert not api.calls_of("getFile"), "refused from what Telegram announced, before downloading"
    api.push_message(CHAT, photo=photo_bytes(), caption="What is this?", user_id=USER)
    await wait_answers(api, CHAT, 1)  # and the chat goes on


async def test_without_a_speech_model_a_voice_note_is_told_how_an_admin_adds_one(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    settings = bot_settings(api, int4_store[0].root, tmp_path)
    async with running_bot(api, settings) as running:
        api.push_media(CHAT, "voice", voice(2.0), duration=2, user_id=USER)
        await api.wait_for(lambda: bool(api.visible_text(CHAT)), 20, "a reply")
        assert api.visible_text(CHAT) == [texts.NO_SPEECH_MODEL]
        assert not api.calls_of("getFile")
        api.push_message(CHAT, "/model", user_id=USER)
        await api.wait_for(lambda: len(api.visible_text(CHAT)) == 2, 20, "/model")
        assert "Voice questions: no speech model" in api.visible_text(CHAT)[1]
        assert await stored_messages(running.services.history, ConversationKey(CHAT)) == []


async def test_model_names_the_speech_model(bot: RunningBot) -> None:
    bot.api.push_message(CHAT, "/model", user_id=USER)
    await bot.api.wait_for(lambda: bool(bot.api.visible_text(CHAT)), 20, "/model")
    assert re.search(r"^Voice questions: .+, int8$", bot.api.visible_text(CHAT)[0], re.MULTILINE)


async def test_an_admin_converts_a_speech_model_from_the_chat_and_voice_notes_are_heard_at_once(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tiny_whisper: Path, tmp_path: Path
) -> None:
    """INT8 by default (PRECISION=int4 is the vision model's), without a confirmation (no repository code runs),
    chosen as the speech model beside the vision model that keeps serving."""
    store = tmp_path / "store"
    shutil.copytree(int4_store[0].root, store, symlinks=True, copy_function=shutil.copy)
    settings = bot_settings(api, store, tmp_path / "data", admin_user_ids=str(ADMIN), allowed_user_ids=f"{ADMIN}")
    async with running_bot(api, settings) as running:
        api.push_message(ADMIN, f"/convert {tiny_whisper}", user_id=ADMIN)
        await api.wait_for(lambda: any("✅" in t for t in api.visible_text(ADMIN)), 240, "the conversion")
        assert api.visible_text(ADMIN)[-1].startswith(f"✅ Voice questions are now heard by {tiny_whisper} (int8).")
        engine = running.services.engine
        assert isinstance(engine, Engine) and engine.hears and engine.serving.source == int4_store[1].source
        chosen = ModelStore(store).active(SPEECH.name)
        assert chosen is not None and chosen.precision == "int8"
        api.push_media(ADMIN, "voice", voice(2.0), duration=2, user_id=ADMIN)
        await wait_answers(api, ADMIN, 2)  # the conversion's message, then the answer
        _heard_above(api.messages(ADMIN)[-1].text)


@pytest.mark.parametrize(
    ("ending", "said"),
    [
        ((Started(), Heard("", ""), Finished("", "complete")), texts.NOT_HEARD),
        ((Started(), Finished("", "cancelled")), "⏹ Stopped."),  # /stop while it waited to be written down
        ((Started(), Finished("", "failed", error="no speech model is loaded")), "⚠️ " + texts.NO_ANSWER),
    ],
    ids=["no words heard", "stopped before", "failed before"],
)
async def test_a_voice_question_that_asked_nothing_is_told_so_and_leaves_no_question_behind(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path, ending: tuple[Event, ...], said: str
) -> None:
    """The engine hears no words in it, or it ends before anything is heard: what the answer's stream makes of
    those events, fed to it as the engine gives them (a random-weight speech model always hears something).  No 🔁:
    there is no question to ask again."""
    async with running_bot(api, bot_settings(api, int4_store[0].root, tmp_path)) as running:
        services, key = running.services, ConversationKey(CHAT)
        sent = {"message_id": 5, "date": 0, "chat": {"id": CHAT, "type": "private"}, "from": api.user(USER)}
        message = Message.de_json(sent, running.application.bot)
        question_id, answer_id = await services.history.start_exchange(key, "", telegram_message_id=5, user_id=USER)
        asking = Asking(message, key, USER, Turn("user", ""), speech=Speech(b"\x00" * 64))

        async def events() -> AsyncIterator[Event]:
            for event in ending:
                yield event

        async with services.answers.claim(key, USER, lambda *_: None) as claimed:
            assert isinstance(claimed, AnswerInProgress)
            await AnswerStream(services, asking, StoredExchange(question_id, answer_id), 5).show(events(), claimed)
            assert await stored_messages(services.history, key) == [], "forgotten while the conversation is claimed"
        assert api.messages(CHAT)[-1].text == said and not api.messages(CHAT)[-1].reply_markup
        assert await stored_messages(services.history, key) == []


async def test_an_answer_to_a_voice_question_cut_by_a_crash_is_repaired_below_what_was_heard(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    """As a kill -9 leaves it while the answer was a draft (tests/test_bot_process.py kills a running bot): the
    question heard, the answer's text saved, no message shown yet."""
    key = ConversationKey(CHAT)
    async with await HistoryStore.open(tmp_path / "history.sqlite3") as history:
        question_id, answer_id = await history.start_exchange(key, "", telegram_message_id=5, user_id=USER)
        await history.hear(question_id, "what plant is this", "what plant is this")
        await history.update_assistant_message(answer_id, "It is a fern", telegram_message_ids=[], status="streaming")
    async with running_bot(api, bot_settings(api, int4_store[0].root, tmp_path)):
        await api.wait_for(lambda: bool(api.messages(CHAT)), 20, "the repair")
        [repaired] = api.messages(CHAT)
        assert repaired.text.startswith("🎤 what plant is this\n\nIt is a fern"), repaired.text
        assert repaired.text.endswith(texts.INTERRUPTED.strip()) and repaired.reply_to == 5
