"""The real python-telegram-bot Application, over HTTP against the stand-in Bot API, with the tiny model."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import shutil
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from bot import texts
from bot.answers.context_view import model_view
from bot.handlers.questions import Questions
from bot.history import ConversationKey, HistoryStore, StoredMessage
from bot.output import buttons
from bot.output.edits import CURSOR
from bot.output.formatting import formatted_parts
from bot.running.runtime import load_model
from bot.settings import Settings
from devkit.bot_api_server import FakeBotApi
from devkit.harness import (
    ADMIN,
    STRANGER,
    USER,
    RunningBot,
    answer_drafts,
    bot_settings,
    finished,
    has_retry,
    photo_bytes,
    press,
    running_bot,
    stored_messages,
    streaming,
    wait_answers,
)
from devkit.hub_server import StandInHub
from engine.pipeline_process import LoadedModel
from model_store.loader import select_entry
from model_store.store import ModelEntry, ModelStore
from tests.support.hub_checkpoints import CLIP_REPO, push_clip, push_phi3v

CHAT = USER  # a private chat's id is the user's id
GROUP = -100123


@pytest.fixture
async def bot(api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path) -> AsyncIterator[RunningBot]:
    async with running_bot(api, bot_settings(api, int4_store[0].root, tmp_path)) as running:
        yield running


async def test_commands_are_registered(bot: RunningBot) -> None:
    names = [command["command"] for command in bot.api.commands]
    assert names == ["help", "reset", "stop", "retry", "persona", "model"]


async def test_a_private_answer_streams_as_drafts_then_is_sent_as_a_message(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    settings = bot_settings(api, int4_store[0].root, tmp_path, max_new_tokens=1000, draft_interval_seconds=0.1)
    async with running_bot(api, settings, long_answers=True) as bot:
        api.push_message(CHAT, photo=photo_bytes(), caption="What is in this picture?", user_id=USER)
        await wait_answers(api, CHAT, 1)
        stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    [answer] = api.messages(CHAT)
    drafts = answer_drafts(api, CHAT)
    assert api.draft_texts(CHAT)[0] == "", "Telegram's own Thinking… from the first moment"
    assert len(drafts) >= 3, f"the draft grew as the answer was written: {api.draft_texts(CHAT)}"
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(drafts)), "no word taken back"
    assert not any(draft.endswith(CURSOR) for draft in drafts), "a draft is animated by Telegram: no cursor"
    assert api.calls_of("editMessageText") == [], "nothing was edited"
    assert answer.edits == [answer.text] and has_retry(answer), "the final text, sent once"
    assert stored[1].text.startswith(drafts[-1]) and answer.text.strip()
    assert api.shown_draft(CHAT) is None, "the message took the draft's place"
    assert api.calls_of("sendChatAction", CHAT), "typing indicator at once"
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "complete")]
    assert stored[0].text == "What is in this picture?" and len(stored[0].images) == 1
    assert stored[1].telegram_message_ids == (answer.message_id,)


@pytest.mark.parametrize(("chat", "drafts"), [(GROUP, True), (CHAT, False)], ids=["group", "private-drafts-off"])
async def test_an_answer_in_a_group_or_without_drafts_streams_as_edits(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path, chat: int, drafts: bool
) -> None:
    # Long enough to outlast a group's 0.5 s between edits however fast the tiny model writes (1,000 tokens are
    # about 2,500 characters: one message).
    settings = bot_settings(api, int4_store[0].root, tmp_path, max_new_tokens=1000, stream_drafts=drafts)
    async with running_bot(api, settings, long_answers=True) as bot:
        username = bot.application.bot.username
        api.push_message(chat, photo=photo_bytes(), caption=f"@{username} What is in this picture?", user_id=USER)
        await wait_answers(api, chat, 1)
        stored = await stored_messages(bot.services.history, ConversationKey(chat))
    [answer] = api.messages(chat)
    assert answer.edits[0] == texts.PLACEHOLDER
    assert len(answer.edits) >= 3, f"placeholder, status, streamed text, final: {answer.edits}"
    assert any(edit.endswith(CURSOR) for edit in answer.edits), "partial text was shown while streaming"
    assert not answer.text.endswith(CURSOR) and answer.text.strip() and has_retry(answer)
    assert api.calls_of("sendMessageDraft") == [], "no drafts"
    assert stored[1].status == "complete" and stored[1].telegram_message_ids == (answer.message_id,)


@pytest.mark.parametrize("failure", ["400", "404"])
async def test_a_draft_refused_mid_answer_turns_it_into_edits_without_losing_text(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path, failure: str
) -> None:
    """A 400 changes that answer only; a 404 (an older self-hosted Bot API server without the method) every
    later answer of the process too."""
    settings = bot_settings(api, int4_store[0].root, tmp_path, max_new_tokens=4000)
    async with running_bot(api, settings, long_answers=True) as bot:
        engine = bot.services.engine
        assert engine is not None
        api.push_message(CHAT, "Write a long story.", user_id=USER)
        await api.wait_for(lambda: len(answer_drafts(api, CHAT)) >= 2, 30, "the answer streaming as a draft")
        if failure == "400":
            api.fail_next("sendMessageDraft", kind="400", description="Bad Request: TEXTDRAFT_PEER_INVALID")
        else:
            api.forget("sendMessageDraft")
        await api.wait_for(lambda: any(m.text.endswith(CURSOR) for m in api.messages(CHAT)), 30, "edits")
        refused = [call for call in api.calls_of("sendMessageDraft") if call.status != 200]
        drafted, drafts_before = answer_drafts(api, CHAT), len(api.draft_texts(CHAT))
        engine.settings = replace(engine.settings, max_new_tokens=30)
        api.push_message(CHAT, "/stop", user_id=USER)
        await api.wait_for(lambda: any(t.endswith("Stopped.") for t in api.visible_text(CHAT)), 30, "stopped")
        api.push_message(CHAT, "And another one.", user_id=USER)
        stored = await finished_answers(bot, ConversationKey(CHAT), 2)
    first, second = (api.messages(CHAT)[0], api.messages(CHAT)[-1])
    assert [call.status for call in refused] == [int(failure)], "one refusal, then edits"
    assert first.edits[0].endswith(CURSOR) and first.edits[0].startswith(drafted[-1]), "the drafted text went on"
    assert len(first.edits) >= 2 and has_retry(first)
    assert "".join(stored[1].text.split()).startswith("".join(first.edits[0].removesuffix(CURSOR).split()))
    assert stored[1].status == "cancelled" and stored[1].telegram_message_ids[0] == first.message_id
    later_drafts = len(api.draft_texts(CHAT)) > drafts_before
    assert later_drafts == (failure == "400"), "a 400 was this answer's; a 404 means the server lacks the method"
    assert (second.edits[0] == texts.PLACEHOLDER) == (failure == "404")
    assert stored[3].status == "complete" and stored[3].telegram_message_ids == (second.message_id,)


async def finished_answers(bot: RunningBot, key: ConversationKey, count: int) -> list[StoredMessage]:
    """The conversation once ``count`` answers in it are finished and shown as such."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        stored = await stored_messages(bot.services.history, key)
        answers = [m for m in stored if m.role == "assistant" and m.status != "streaming"]
        shown = {m.message_id: m for m in bot.api.messages(key.chat_id) if finished(m)}
        ids = [message_id for answer in answers for message_id in answer.telegram_message_ids]
        if (
            len(answers) >= count
            and all(a.telegram_message_ids for a in answers)
            and all(i in shown and not shown[i].text.endswith(CURSOR) for i in ids)
        ):
            return stored
        assert asyncio.get_running_loop().time() < deadline, f"{count} answers not finished: {stored}"
        await asyncio.sleep(0.1)


async def test_stop_during_a_drafted_answer_keeps_the_partial_answer(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    settings = bot_settings(api, int4_store[0].root, tmp_path, max_new_tokens=4000)
    async with running_bot(api, settings, long_answers=True) as bot:
        api.push_message(CHAT, "Write a very long story.", user_id=USER)
        await api.wait_for(lambda: streaming(api, CHAT), 30, "streaming started")
        assert api.messages(CHAT) == [], "a draft, no message yet"
        api.push_message(CHAT, "/stop", user_id=USER)
        await api.wait_for(lambda: any(t.endswith("Stopped.") for t in api.visible_text(CHAT)), 30, "the answer")
        stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    [answer] = [m for m in api.messages(CHAT) if m.text != texts.STOPPING]
    assert texts.STOPPING in api.visible_text(CHAT) and has_retry(answer)
    assert stored[1].status == "cancelled" and stored[1].telegram_message_ids == (answer.message_id,)
    assert stored[1].text.startswith(answer_drafts(api, CHAT)[-1]), "what the draft showed is kept"
    assert api.calls_of("editMessageText") == []


async def test_follow_up_uses_the_history(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(CHAT, photo=photo_bytes(), caption="What is this?", user_id=USER)
    await wait_answers(api, CHAT, 1)
    api.push_message(CHAT, "And what colour is the square?", user_id=USER)
    await wait_answers(api, CHAT, 2)
    stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert [m.role for m in stored] == ["user", "assistant", "user", "assistant"]
    assert bot.services.engine is not None and bot.services.engine.stats.answered == 2


async def test_a_photo_sent_alone_is_read_while_the_question_is_typed(bot: RunningBot) -> None:
    api, engine = bot.api, bot.services.engine
    assert engine is not None
    api.push_message(CHAT, photo=photo_bytes(), user_id=USER)
    await api.wait_for(lambda: texts.photos_kept(1) in api.visible_text(CHAT), 20, "the photo is acknowledged")
    [kept] = api.messages(CHAT)
    assert kept.reply_markup is not None and "Describe" in str(kept.reply_markup)
    await api.wait_for(lambda: engine.stats.prepared >= 1, 30, "the photo read ahead")
    api.push_message(CHAT, "What colour is the square?", user_id=USER)
    await wait_answers(api, CHAT, 1)
    stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert [(m.role, m.text, len(m.images)) for m in stored] == [
        ("user", "", 1),
        ("user", "What colour is the square?", 0),
        ("assistant", stored[2].text, 0),
    ]
    assert engine.stats.replays == 0, "the question did not have to read the photo again"


async def test_the_describe_button_asks_for_a_description(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(CHAT, photo=photo_bytes(), user_id=USER)
    await api.wait_for(lambda: texts.photos_kept(1) in api.visible_text(CHAT), 20, "the photo is acknowledged")
    [kept] = api.messages(CHAT)
    press(api, kept, buttons.DESCRIBE, user_id=USER)
    await wait_answers(api, CHAT, 2)  # the acknowledgement without its button, and the description
    assert kept.reply_markup is None, "the button is used once"
    answer = api.messages(CHAT)[1]
    assert answer.reply_to == kept.message_id
    stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert [(m.role, m.text) for m in stored][:2] == [("user", ""), ("user", texts.DESCRIBE)]


async def test_a_photo_mentioning_the_bot_in_a_group_is_described(bot: RunningBot) -> None:
    api = bot.api
    username = bot.application.bot.username
    api.push_message(GROUP, photo=photo_bytes(), caption=f"@{username}", user_id=USER)
    await wait_answers(api, GROUP, 1)
    stored = await stored_messages(bot.services.history, ConversationKey(GROUP))
    assert stored[0].text == texts.DESCRIBE and len(stored[0].images) == 1


async def test_the_turn_1_photo_is_still_seen_at_turn_30(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    settings = bot_settings(
        api, int4_store[0].root, tmp_path, history_tokens=1100, max_new_tokens=12, user_requests_per_minute=600
    )
    async with running_bot(api, settings) as bot:
        engine = bot.services.engine
        assert engine is not None
        api.push_message(CHAT, photo=photo_bytes(), caption="What is in this photo?", user_id=USER)
        await wait_answers(api, CHAT, 1)
        for turn in range(2, 31):
            api.push_message(CHAT, f"Follow-up number {turn}: and the square?", user_id=USER)
            await wait_answers(api, CHAT, turn)
        key = ConversationKey(CHAT)
        outline = await bot.services.history.outline(key)
        stored = await stored_messages(bot.services.history, key)
        view = await model_view(bot.services, engine, key)
    assert outline.window.start is not None and outline.window.pin == stored[0].id, "the photo's exchange is pinned"
    assert len(view.turns) < 40, "older text turns left the view"
    assert len(view.turns[0].images) == 1 and view.turns[0].text == "What is in this photo?"
    assert view.turns[-1].role == "assistant" and view.turns[-2].text == "Follow-up number 30: and the square?"
    assert view.tokens <= 1100
    assert engine.stats.prepared_steps >= 3, "the views after its coming steps were read ahead"


async def test_reset_forgets_the_conversation(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(CHAT, "Hello there", user_id=USER)
    await wait_answers(api, CHAT, 1)
    api.push_message(CHAT, "/reset", user_id=USER)
    await api.wait_for(lambda: texts.RESET_DONE in api.visible_text(CHAT), 20, "reset confirmation")
    assert await stored_messages(bot.services.history, ConversationKey(CHAT)) == []


async def test_group_rules_mention_reply_and_command(bot: RunningBot) -> None:
    api = bot.api
    username = bot.application.bot.username
    api.push_message(GROUP, "just chatting among ourselves", user_id=USER)
    question = api.push_message(GROUP, f"@{username} what is a photo?", user_id=USER)
    await wait_answers(api, GROUP, 1)
    [answer] = api.messages(GROUP)
    assert answer.reply_to == question["message_id"], "answers reply to the asking message"
    reply = api.push_message(
        GROUP, "tell me more", user_id=USER, reply_to=api.bot_message_dict(GROUP, answer.message_id)
    )
    await wait_answers(api, GROUP, 2)
    assert api.messages(GROUP)[1].reply_to == reply["message_id"]
    api.push_message(GROUP, "/model", user_id=USER)
    await api.wait_for(lambda: any("Precision: int4" in t for t in api.visible_text(GROUP)), 20, "/model answer")
    stored = await stored_messages(bot.services.history, ConversationKey(GROUP))
    assert [m.text for m in stored if m.role == "user"] == ["what is a photo?", "tell me more"]


async def test_forum_topics_have_separate_histories(bot: RunningBot) -> None:
    api = bot.api
    api.forums.add(GROUP)
    username = bot.application.bot.username
    api.push_message(GROUP, f"@{username} topic one question", user_id=USER, thread_id=11)
    await wait_answers(api, GROUP, 1)
    api.push_message(GROUP, f"@{username} topic two question", user_id=USER, thread_id=22)
    await wait_answers(api, GROUP, 2)
    one = await stored_messages(bot.services.history, ConversationKey(GROUP, 11))
    two = await stored_messages(bot.services.history, ConversationKey(GROUP, 22))
    assert one[0].text == "topic one question"
    assert two[0].text == "topic two question"
    assert {m.thread_id for m in api.messages(GROUP)} == {11, 22}


async def test_an_album_gets_one_answer_about_all_photos(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(CHAT, photo=photo_bytes((200, 0, 0)), caption="Compare these", media_group_id="alb1", user_id=USER)
    api.push_message(CHAT, photo=photo_bytes((0, 200, 0)), media_group_id="alb1", user_id=USER)
    await wait_answers(api, CHAT, 1)
    stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert len(stored) == 2 and len(stored[0].images) == 2 and stored[0].text == "Compare these"
    assert len(api.messages(CHAT)) == 1


async def test_an_album_over_the_image_limit_is_refused_before_the_model(bot: RunningBot) -> None:
    api = bot.api
    limit = bot.services.settings.max_images_per_turn
    for number in range(limit + 1):
        caption = "Compare these" if number == 0 else None
        api.push_message(
            CHAT, photo=photo_bytes((40 * number, 0, 0)), caption=caption, media_group_id="big", user_id=USER
        )
    said = f"I can look at up to {limit} images per question; you sent {limit + 1}."
    await api.wait_for(lambda: said in api.visible_text(CHAT), 20, "the limit told")
    assert bot.services.engine is not None and bot.services.engine.queue.served == 0
    assert await stored_messages(bot.services.history, ConversationKey(CHAT)) == []


def _fail(*args: object) -> None:
    raise RuntimeError("injected by the test")


def _failures(caplog: pytest.LogCaptureFixture, said: str) -> list[logging.LogRecord]:
    """The error handler's records of the injected failure (bot/app.py ``on_error``)."""
    return [r for r in caplog.records if r.getMessage() == said and r.exc_info and "injected" in str(r.exc_info[1])]


async def test_an_album_whose_question_fails_is_reported_to_its_user(
    bot: RunningBot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An album's question runs in the background (bot/running/background.py), after its handler returned; its
    failure still reaches the error handler, which tells the person who sent it."""
    api = bot.api
    monkeypatch.setattr(Questions, "_asked", _fail)
    api.push_message(CHAT, photo=photo_bytes((200, 0, 0)), caption="Compare these", media_group_id="bad", user_id=USER)
    api.push_message(CHAT, photo=photo_bytes((0, 200, 0)), media_group_id="bad", user_id=USER)
    await api.wait_for(lambda: api.visible_text(CHAT) == [texts.FAILED], 20, "a word that something went wrong")
    assert _failures(caplog, "handling an update failed"), "logged with its traceback"


async def test_a_warm_up_that_fails_is_logged_by_the_error_handler(
    api: FakeBotApi,
    int4_store: tuple[ModelStore, ModelEntry],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(HistoryStore, "recent_conversations", _fail)
    async with running_bot(api, bot_settings(api, int4_store[0].root, tmp_path, warm_up_hours=1.0)):
        await api.wait_for(lambda: bool(_failures(caplog, "work in the background failed")), 20, "the failure logged")


async def test_image_sent_as_a_file_and_unsupported_media(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(
        CHAT, document=(photo_bytes(fmt="PNG"), "scan.png", "image/png"), caption="Read this", user_id=USER
    )
    await wait_answers(api, CHAT, 1)
    api.push_message(CHAT, document=(b"PK\x03\x04", "report.zip", "application/zip"), user_id=USER)
    await api.wait_for(lambda: any("can't read" in t for t in api.visible_text(CHAT)), 20, "unsupported reply")
    api.push_message(CHAT, document=(b"not really a png", "fake.png", "image/png"), caption="?", user_id=USER)
    await api.wait_for(lambda: any("not an image" in t for t in api.visible_text(CHAT)), 20, "broken image reply")
    stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert len(stored) == 2, "refused inputs leave no trace in the history"


async def test_strangers_get_no_model_time(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(STRANGER, "hello?", user_id=STRANGER)
    await api.wait_for(lambda: texts.NOT_ALLOWED in api.visible_text(STRANGER), 20, "refusal")
    assert bot.services.engine is not None and bot.services.engine.queue.served == 0
    api.push_message(CHAT, "/convert", user_id=USER)
    await api.wait_for(lambda: texts.ADMINS_ONLY in api.visible_text(CHAT), 20, "admin refusal")


async def test_a_stranger_hears_one_refusal_in_private_and_nothing_in_groups(bot: RunningBot) -> None:
    """Every command, a mention and a photo: a stranger is told once that the bot is private (a refusal costs
    the bot a message, so it is not repeated for a few minutes), and a group hears nothing of it."""
    api = bot.api
    commands = ["/start", "/help", "/model", "/reset", "/stop", "/stats", "/convert", "/persona be rude", "hi"]
    for command in commands:
        api.push_message(STRANGER, command, user_id=STRANGER)
        api.push_message(GROUP, command.replace("hi", "@phi3_test_bot hi"), user_id=STRANGER)
    api.push_message(STRANGER, photo=photo_bytes(), caption="what is this?", user_id=STRANGER)
    await api.wait_for(lambda: bool(api.visible_text(STRANGER)), 20, "the refusal")
    api.push_message(GROUP, "/help", user_id=USER)  # after the stranger's commands: the group heard nothing else
    await api.wait_for(lambda: bool(api.visible_text(GROUP)), 20, "help for an allowed user")
    await asyncio.sleep(0.5)
    assert api.visible_text(STRANGER) == [texts.NOT_ALLOWED], "one refusal, not one per message"
    assert [text[:20] for text in api.visible_text(GROUP)] == [texts.HELP[:20]]
    assert not api.calls_of("getFile"), "nothing a stranger sends is downloaded"
    assert not api.calls_of("getChatMember"), "nor does a stranger's /reset cost a question to Telegram"
    counts = bot.services.refusals.counts
    assert counts.sent == 1 and counts.repeated == len(commands)


async def test_model_shows_a_local_checkpoints_path_only_to_admins(bot: RunningBot, tiny_checkpoint: Path) -> None:
    api = bot.api
    api.push_message(CHAT, "/model", user_id=USER)
    api.push_message(ADMIN, "/model", user_id=ADMIN)
    await api.wait_for(lambda: bool(api.visible_text(CHAT) and api.visible_text(ADMIN)), 20, "two answers")
    [for_user], [for_admin] = api.visible_text(CHAT), api.visible_text(ADMIN)
    assert str(tiny_checkpoint) not in for_user and str(tiny_checkpoint.parent) not in for_user, for_user
    assert f"Model: {tiny_checkpoint.name} (converted from a local directory)" in for_user
    assert f"Model: {tiny_checkpoint}" in for_admin


async def test_edited_messages_and_commands_are_not_new_requests(bot: RunningBot) -> None:
    api = bot.api
    question = api.push_message(CHAT, photo=photo_bytes(), caption="What is it?", user_id=USER)
    await wait_answers(api, CHAT, 1)
    command = api.push_message(ADMIN, "/model", user_id=ADMIN)
    await api.wait_for(lambda: len(api.visible_text(ADMIN)) == 1, 20, "the command answered once")
    api.push_edit(question, caption="What colour is it?")
    api.push_edit(command, text="/stats")
    api.push_message(ADMIN, "/help", user_id=ADMIN)  # after the edits: once it is answered, they were handled
    await api.wait_for(lambda: len(api.visible_text(ADMIN)) >= 2, 20, "help")
    await asyncio.sleep(0.5)
    assert len(api.visible_text(CHAT)) == 1 and len(api.visible_text(ADMIN)) == 2, "nothing answered an edit"
    assert api.visible_text(ADMIN)[1].startswith(texts.HELP[:30])
    assert len(await stored_messages(bot.services.history, ConversationKey(CHAT))) == 2
    assert bot.services.engine is not None and bot.services.engine.queue.served == 1


async def test_a_handler_that_fails_is_reported_to_its_user(bot: RunningBot) -> None:
    api = bot.api
    api.fail_next("sendMessage", kind="400", description="Bad Request: injected by the test")
    api.push_message(CHAT, "/help", user_id=USER)
    await api.wait_for(lambda: api.visible_text(CHAT) == [texts.FAILED], 20, "a word that something went wrong")


async def test_stop_button_keeps_the_partial_answer(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    settings = bot_settings(api, int4_store[0].root, tmp_path, max_new_tokens=4000, stream_drafts=False)
    async with running_bot(api, settings, long_answers=True) as bot:
        api.push_message(CHAT, "Write a very long story.", user_id=USER)
        await api.wait_for(lambda: streaming(api, CHAT), 30, "streaming started")
        [answer] = api.messages(CHAT)
        press(api, answer, buttons.STOP, user_id=USER)
        await wait_answers(api, CHAT, 1)
        assert answer.text.endswith("Stopped.")
        stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
        assert stored[1].status == "cancelled" and stored[1].text.strip()
        assert stored[1].text.split()[0] in answer.text


@pytest.mark.parametrize("method", ["editMessageText", "sendMessageDraft"])
async def test_flood_control_storm_loses_no_text(
    api: FakeBotApi,
    int4_store: tuple[ModelStore, ModelEntry],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    method: str,
) -> None:
    drafts = method == "sendMessageDraft"
    tokens = 4000 if drafts else 200  # drafts wait only as long as told: a longer answer meets several 429s
    settings = bot_settings(api, int4_store[0].root, tmp_path, max_new_tokens=tokens, stream_drafts=drafts)
    async with running_bot(api, settings, long_answers=True) as bot:
        api.storm(method, 6.0)  # long enough for several refusals on a slow machine
        api.push_message(CHAT, photo=photo_bytes(), caption="Describe in detail.", user_id=USER)
        stored = await finished_answers(bot, ConversationKey(CHAT), 1)
        assert stored[1].status == "complete"
        parts = [part.text for part in formatted_parts(stored[1].text)]
        # The answer is stored as finished before its last part is sent, and the storm may still hold that back.
        await api.wait_for(lambda: [m.text for m in api.messages(CHAT)] == parts, 30, "every part of the answer")
        refused = [c for c in api.calls_of(method) if c.status == 429]
        assert refused, "the storm really happened"
        gaps = [b.at - a.at for a, b in itertools.pairwise(refused)]
        assert min(gaps, default=1.0) > 0.5, "no tight retry loop against flood control"
        assert api.calls_of("editMessageText" if drafts else "sendMessageDraft") == [], "one way of streaming"
    assert len(refused) >= 2 and not [r for r in caplog.records if r.levelno >= logging.ERROR], "429 is no error"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "flood control" in r.getMessage()]
    assert len(warnings) <= 1, "one warning per storm (none if another test's storm is still fresh)"


@pytest.mark.parametrize("warm_up_hours", [1.0, 0.0])
async def test_history_survives_a_restart_and_recent_chats_are_read_again_at_start(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path, warm_up_hours: float
) -> None:
    settings = bot_settings(api, int4_store[0].root, tmp_path, warm_up_hours=warm_up_hours)
    async with running_bot(api, settings):
        api.push_message(CHAT, photo=photo_bytes(), caption="What is this?", user_id=USER)
        await wait_answers(api, CHAT, 1)
    async with running_bot(api, settings) as bot:
        engine = bot.services.engine
        assert engine is not None
        if warm_up_hours:
            await api.wait_for(lambda: engine.stats.prepared == 1, 30, "the conversation read again after the start")
        api.push_message(CHAT, "And the colour?", user_id=USER)
        await wait_answers(api, CHAT, 2)
        stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
        assert [m.role for m in stored] == ["user", "assistant", "user", "assistant"]
        assert engine.stats.replays == (0 if warm_up_hours else 1), "the photo from before the restart is read again"


async def test_admin_converts_and_the_new_model_goes_live(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(int4_store[0].root, store, symlinks=True)  # the shared store stays as it is
    async with running_bot(api, bot_settings(api, store, tmp_path)) as bot:
        api.push_message(ADMIN, f"/convert {tiny_checkpoint} int8", user_id=ADMIN)
        await api.wait_for(lambda: any(t.startswith("✅") for t in api.visible_text(ADMIN)), 240, "conversion done")
        [status] = api.messages(ADMIN)
        assert len(status.edits) >= 3, f"progress was shown: {status.edits}"
        assert "int8" in status.text
        assert bot.services.engine is not None and bot.services.engine.model.entry.precision == "int8"
        api.push_message(ADMIN, "Hello on the new model", user_id=ADMIN)
        await wait_answers(api, ADMIN, 2)


@pytest.mark.timeout(300)
async def test_a_repository_nobody_vouched_for_converts_only_the_revisions_an_admin_confirmed(
    api: FakeBotApi, hub: StandInHub, int4_store: tuple[ModelStore, ModelEntry], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Converting it runs its Python code here: the admin is shown its revision and that of the repository it
    names for its image processor, confirms with a button, and those revisions are converted even if both
    repositories move on meanwhile."""
    store = tmp_path / "store"
    shutil.copytree(int4_store[0].root, store, symlinks=True)
    repo = "someone/phi3v-finetune"
    clip = push_clip(hub, tiny_checkpoint)
    shown = push_phi3v(hub, repo, tiny_checkpoint)
    async with running_bot(api, bot_settings(api, store, tmp_path)) as bot:
        api.push_message(ADMIN, f"/convert {repo} int8", user_id=ADMIN)
        await api.wait_for(lambda: any(shown in t for t in api.visible_text(ADMIN)), 30, "the question")
        [question] = api.messages(ADMIN)
        assert texts.trust_remote_code(repo, shown, [(CLIP_REPO, clip)]) == question.text
        assert all(path.endswith(".json") for path in hub.files_read()), "only configuration was read"
        assert question.reply_markup is not None
        yes, no = (row[0]["callback_data"] for row in question.reply_markup["inline_keyboard"])

        api.push_message(ADMIN, f"/convert {repo} int8", user_id=ADMIN)  # asked again: a second question
        await api.wait_for(lambda: len(api.messages(ADMIN)) == 2, 30, "the second question")
        second = api.messages(ADMIN)[1]
        assert second.reply_markup is not None
        cancel = second.reply_markup["inline_keyboard"][1][0]["callback_data"]
        api.push_callback(ADMIN, second.message_id, cancel, user_id=ADMIN)
        await api.wait_for(lambda: second.text == texts.CONVERSION_CANCELLED, 30, "cancelled")
        assert second.reply_markup is None

        # After the admin read the code, both repositories move on: to code that would end the conversion.
        hub.change(repo, {"configuration_phi3_v.py": b"raise SystemExit"})
        clip_config = json.loads((tiny_checkpoint / "clip-vit-large-patch14-336" / "config.json").read_text())
        clip_config["auto_map"] = {"AutoConfig": "configuration_clip.ClipConfig"}
        hub.change(
            CLIP_REPO, {"config.json": json.dumps(clip_config).encode(), "configuration_clip.py": b"raise SystemExit"}
        )
        refused = api.push_callback(ADMIN, question.message_id, yes, user_id=USER)
        await api.wait_for(lambda: api.callback_queries[refused] is not None, 30, "the refusal")
        assert api.callback_queries[refused] == texts.ADMINS_ONLY and not question.text.startswith("🔧")
        api.push_callback(ADMIN, question.message_id, yes, user_id=ADMIN)
        await api.wait_for(lambda: question.text.startswith(("✅", "❌")), 240, "the conversion")
        assert question.text.startswith(f"✅ Now serving {repo} (int8)"), question.text
        assert bot.services.engine is not None and bot.services.engine.model.entry.revision == shown
        assert bot.services.engine.model.entry.manifest["pinned"] == {repo: shown, CLIP_REPO: clip}
    read = hub.files_read()
    pinned = (f"{repo}/resolve/{shown}/", f"{CLIP_REPO}/resolve/{clip}/")
    assert read and all(path.startswith(pinned) for path in read), "only the revisions shown"
    assert no != yes


def _told(api: FakeBotApi, count: int) -> bool:
    """The admin has ``count`` messages, the last of them final."""
    said = api.visible_text(ADMIN)
    return len(said) == count and said[-1].startswith("❌ The")


async def test_convert_tells_the_admin_when_the_hub_does_not_answer(
    api: FakeBotApi, hub: StandInHub, int4_store: tuple[ModelStore, ModelEntry], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The look-up before the question (a repository nobody vouched for) and the conversion's own (a known one,
    in its process) each give a request HUB_TIMEOUT_SECONDS, and the admin is told; a Hub that answers each
    request just in time gets the look-up twice that in all."""
    store = tmp_path / "store"
    shutil.copytree(int4_store[0].root, store, symlinks=True)
    push_clip(hub, tiny_checkpoint)
    push_phi3v(hub, "someone/phi3v-finetune", tiny_checkpoint)
    settings = bot_settings(api, store, tmp_path, hub_timeout_seconds=1)
    async with running_bot(api, settings):
        hub.delay = 0.5  # each request in time, about eight in all
        api.push_message(ADMIN, "/convert someone/phi3v-finetune int8", user_id=ADMIN)
        await api.wait_for(lambda: texts.hub_too_slow(2) in api.visible_text(ADMIN), 15, "the slow look-up's end")
        hub.stall()
        for count, model in enumerate(("someone/phi3v-finetune", "phi-3.5-vision"), start=2):
            api.push_message(ADMIN, f"/convert {model} int8", user_id=ADMIN)
            await api.wait_for(lambda count=count: _told(api, count), 60, "the look-up's end")
        # The slow look-up's thread goes on after its reply, until a request of it gives up.
        await api.wait_for(lambda: "hub-look-up" not in {t.name for t in threading.enumerate()}, 30, "its end")
    told = api.visible_text(ADMIN)
    assert len(told) == 3, told
    assert told[1].startswith("❌ The Hugging Face Hub did not answer within 1 s about someone/phi3v-finetune"), told
    assert told[2].startswith("❌ The Hugging Face Hub did not answer within 1 s about microsoft/Phi-3.5-vision")


async def test_a_model_that_fails_to_load_is_not_chosen_for_the_next_start(
    api: FakeBotApi,
    int4_store: tuple[ModelStore, ModelEntry],
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The conversion succeeds (and validated the model in its own process), but loading it in the bot fails,
    as a model too large for the memory left beside the serving one would."""
    store = tmp_path / "store"
    shutil.copytree(int4_store[0].root, store, symlinks=True)

    def refuse_int8(settings: Settings, entry: ModelEntry | None = None) -> LoadedModel:
        if entry is not None and entry.precision == "int8":
            raise RuntimeError("not enough memory to load the new model (the test says so)")
        return load_model(settings, entry)

    monkeypatch.setattr("bot.running.runtime.load_model", refuse_int8)
    settings = bot_settings(api, store, tmp_path)
    async with running_bot(api, settings) as bot:
        api.push_message(ADMIN, f"/convert {tiny_checkpoint} int8", user_id=ADMIN)
        await api.wait_for(lambda: any(t.startswith("❌") for t in api.visible_text(ADMIN)), 240, "loading failed")
        assert bot.services.engine is not None and bot.services.engine.model.entry.precision == "int4"
    chosen = select_entry(ModelStore(store), settings.model, settings.precision)
    assert chosen.precision == "int4", "the next start loads the model that was serving"


async def test_a_question_replying_to_a_photo_is_about_that_photo(bot: RunningBot) -> None:
    api = bot.api
    photo_message = api.push_message(GROUP, photo=photo_bytes((10, 10, 200)), user_id=USER)
    username = bot.application.bot.username
    api.push_message(GROUP, f"@{username} what colour is this?", user_id=USER, reply_to=photo_message)
    await wait_answers(api, GROUP, 1)
    stored = await stored_messages(bot.services.history, ConversationKey(GROUP))
    assert stored[0].text == "what colour is this?" and len(stored[0].images) == 1


async def test_animated_stickers_and_voice_get_a_friendly_note(bot: RunningBot) -> None:
    """Animated stickers are Lottie animations (TGS), which no video decoder reads; video stickers are clips.  A
    voice message needs a speech model, which this bot has not (tests/test_bot_voice.py has one)."""
    api = bot.api
    sticker = {
        "file_id": "sticker-1",
        "file_unique_id": "st1",
        "type": "regular",
        "width": 512,
        "height": 512,
        "is_animated": True,
        "is_video": False,
    }
    sent = api.push_message(CHAT, user_id=USER, extra={"sticker": sticker})  # alone: a reaction, not a question
    api.push_message(CHAT, "What is this sticker?", user_id=USER, reply_to=sent)
    api.push_message(CHAT, user_id=USER, extra={"voice": {"file_id": "v1", "file_unique_id": "v1u", "duration": 3}})
    await api.wait_for(lambda: len(api.visible_text(CHAT)) == 2, 20, "two notes")
    assert api.visible_text(CHAT) == [texts.unsupported("animated_sticker"), texts.NO_SPEECH_MODEL]


async def test_a_second_chat_sees_its_place_in_line(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    settings = bot_settings(api, int4_store[0].root, tmp_path, max_new_tokens=600, allowed_user_ids="7,8")
    async with running_bot(api, settings, long_answers=True):
        api.push_message(CHAT, "Write a long story.", user_id=USER)
        await api.wait_for(lambda: streaming(api, CHAT), 30, "first answer streaming")
        api.push_message(8, "Me too, please.", user_id=8)
        await api.wait_for(lambda: any("#1 in line" in t for t in api.draft_texts(8)), 30, "queue position")
        await wait_answers(api, 8, 1, timeout=120)


async def test_statuses_tell_how_long_once_the_speed_is_measured(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(texts, "SAID_FROM_SECONDS", 0.0)  # the tiny model answers faster than a number is worth
    # Answers long enough that the second chat's photo, read in a child meanwhile, still finds the first in line.
    settings = bot_settings(api, int4_store[0].root, tmp_path, max_new_tokens=1000, allowed_user_ids="7,8")
    async with running_bot(api, settings, long_answers=True):  # private chats: the statuses are drafts
        for number, colour in enumerate([(200, 40, 40), (40, 40, 200)], 1):  # the warm-up, the first measurement
            before = len(api.draft_texts(CHAT))
            api.push_message(CHAT, photo=photo_bytes(colour), caption="What is this?", user_id=USER)
            await wait_answers(api, CHAT, number)
            assert texts.looking(1) in api.draft_texts(CHAT)[before:], "no number before the speed was measured"
        before = len(api.draft_texts(CHAT))
        api.push_message(CHAT, photo=photo_bytes((20, 200, 20)), caption="And this one?", user_id=USER)
        await api.wait_for(lambda: streaming(api, CHAT), 30, "answer streaming")
        statuses = [text for text in api.draft_texts(CHAT)[before:] if text.startswith(texts.looking(1))]
        assert statuses and re.fullmatch(r"👀 Looking at your photo… about \d+ s", statuses[0]), statuses
        api.push_message(8, photo=photo_bytes((20, 20, 200)), caption="Mine too?", user_id=8)
        await api.wait_for(
            lambda: any(re.fullmatch(r"⏳ You're #1 in line, about \d+ s\.", text) for text in api.draft_texts(8)),
            30,
            "a wait estimate",
        )
        await wait_answers(api, 8, 1, timeout=120)


async def test_admin_stats(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(ADMIN, "/stats", user_id=ADMIN)
    await api.wait_for(lambda: any("History:" in t for t in api.visible_text(ADMIN)), 20, "stats")
    api.push_message(CHAT, "/stats", user_id=USER)
    await api.wait_for(lambda: texts.ADMINS_ONLY in api.visible_text(CHAT), 20, "refusal")
