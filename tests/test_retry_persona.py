"""Retry (the 🔁 button and /retry) and the per-chat persona (/persona), end to end over HTTP with the tiny model."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bot import texts
from bot.answers.context_view import model_view
from bot.handlers.commands import PERSONA_MAX_CHARS
from bot.history import ConversationKey
from bot.output import buttons
from bot.output.edits import CURSOR
from devkit.bot_api_server import FakeBotApi, SentMessage
from devkit.harness import (
    ADMIN,
    USER,
    bot_settings,
    button,
    callbacks,
    has_retry,
    photo_bytes,
    press,
    running_bot,
    stored_messages,
    wait_answers,
)
from model_store.store import ModelEntry, ModelStore

CHAT = USER  # a private chat's id is the user's id
GROUP = -100123
OTHER = 8  # allowed to use the bot, but did not ask
PIRATE = "You are a pirate.\nAnswer like one, arr."


def with_retry(api: FakeBotApi, chat: int) -> list[SentMessage]:
    return [m for m in api.messages(chat) if has_retry(m)]


async def wait_text(api: FakeBotApi, chat: int, text: str, count: int = 1) -> None:
    await api.wait_for(lambda: api.visible_text(chat).count(text) >= count, 30, repr(text))


async def test_the_retry_button_answers_again_and_replaces_the_answer(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    settings = bot_settings(api, int4_store[0].root, tmp_path, max_new_tokens=24)
    assert settings.temperature == 0, "greedy: the same prompt gets the same text"
    async with running_bot(api, settings, long_answers=True) as bot:
        question = api.push_message(CHAT, photo=photo_bytes(), caption="What is in this picture?", user_id=USER)
        await wait_answers(api, CHAT, 1)
        [first] = api.messages(CHAT)
        assert has_retry(first), "a finished answer carries the Retry button"
        first_text, first_stored = first.text, (await stored_messages(bot.services.history, ConversationKey(CHAT)))[1]

        # The control: greedy choice gives another chat the very same text for the same photo and question.
        api.push_message(ADMIN, photo=photo_bytes(), caption="What is in this picture?", user_id=ADMIN)
        await wait_answers(api, ADMIN, 1)
        assert api.messages(ADMIN)[0].text == first_text

        query = press(api, first, buttons.RETRY, user_id=USER)
        await wait_answers(api, CHAT, 2)
        second = api.messages(CHAT)[1]
        stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert api.callback_queries[query] == "", "the press is acknowledged without a notice"
    assert callbacks(first) == [], "the replaced answer stays in the chat, without its button"
    assert first.text == first_text, "and with its text"
    assert has_retry(second) and second.reply_to == question["message_id"]
    assert second.text.strip() and second.text != first_text, "a retry of a greedy answer is another text"
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "complete")]
    assert stored[0].text == "What is in this picture?" and len(stored[0].images) == 1, "the same question"
    assert stored[1].telegram_message_ids == (second.message_id,)
    assert stored[1].text != first_stored.text, "the history holds only the new answer"


async def test_retry_in_a_group_is_for_the_asker_and_the_bots_admins(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    settings = bot_settings(api, int4_store[0].root, tmp_path, allowed_user_ids=f"{USER},{OTHER}", max_new_tokens=4000)
    async with running_bot(api, settings, long_answers=True) as bot:
        username = bot.application.bot.username
        key = ConversationKey(GROUP)
        question = api.push_message(GROUP, f"@{username} what is a photo?", user_id=USER)
        await api.wait_for(lambda: any(m.text.endswith(CURSOR) for m in api.messages(GROUP)), 30, "streaming")
        api.push_message(GROUP, "/retry", user_id=USER)
        await wait_text(api, GROUP, texts.RETRY_RUNNING)
        api.push_message(GROUP, "/stop", user_id=USER)
        await api.wait_for(lambda: len(with_retry(api, GROUP)) == 1, 30, "the stopped answer")
        [first] = with_retry(api, GROUP)  # the last part of a long answer
        before = await stored_messages(bot.services.history, key)
        assert [m.status for m in before] == ["complete", "cancelled"], "a stopped answer can be retried too"

        old_button = button(first, buttons.RETRY)
        refused = press(api, first, buttons.RETRY, user_id=OTHER)
        api.push_message(GROUP, "/retry", user_id=OTHER)
        await wait_text(api, GROUP, texts.RETRY_ASKER_ONLY)
        await api.wait_for(lambda: api.callback_queries[refused] is not None, 30, "the button press answered")
        assert api.callback_queries[refused] == texts.RETRY_ASKER_ONLY
        assert await stored_messages(bot.services.history, key) == before, "refusals change nothing"
        assert has_retry(first)

        api.push_message(GROUP, "/retry", user_id=ADMIN)  # the bot's admin may, like the asker
        await api.wait_for(lambda: any(m.text.endswith(CURSOR) for m in api.messages(GROUP)), 30, "retrying")
        api.push_message(GROUP, "/stop", user_id=ADMIN)
        await api.wait_for(lambda: with_retry(api, GROUP) not in ([], [first]), 30, "the new answer")
        assert old_button is not None
        stale = api.push_callback(GROUP, first.message_id, old_button, user_id=USER)  # a client that still shows it
        await api.wait_for(lambda: api.callback_queries[stale] is not None, 30, "the old button press answered")
        after = await stored_messages(bot.services.history, key)
    assert api.callback_queries[stale] == texts.BUTTON_EXPIRED
    assert callbacks(first) == [], "the replaced answer lost its button"
    assert [(m.role, m.text) for m in after] == [("user", "what is a photo?"), ("assistant", after[1].text)]
    assert after[0] == before[0] and after[1].id > before[1].id, "the same question, a new answer"
    assert set(after[1].telegram_message_ids).isdisjoint(before[1].telegram_message_ids), "only the new answer"
    second = [m for m in api.messages(GROUP) if m.message_id in after[1].telegram_message_ids]
    assert second[0].reply_to == question["message_id"] and with_retry(api, GROUP) == second[-1:]


async def test_persona_set_shown_reset_and_kept_across_a_restart_and_reset(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    settings = bot_settings(api, int4_store[0].root, tmp_path)
    default = texts.persona_shown(None, settings.system_prompt)
    async with running_bot(api, settings) as bot:
        api.push_message(CHAT, "/persona", user_id=USER)
        await wait_text(api, CHAT, default)
        api.push_message(CHAT, f"/persona {PIRATE}", user_id=USER)
        await wait_text(api, CHAT, texts.PERSONA_SET)
        api.push_message(CHAT, "/persona " + "x" * (PERSONA_MAX_CHARS + 1), user_id=USER)
        await wait_text(api, CHAT, texts.persona_too_long(PERSONA_MAX_CHARS + 1, PERSONA_MAX_CHARS))
        engine = bot.services.engine
        assert engine is not None
        view = await model_view(bot.services, engine, ConversationKey(CHAT))
    assert view.system_prompt == PIRATE, "line breaks kept, the too long one refused"

    async with running_bot(api, settings) as bot:
        api.push_message(CHAT, "/persona", user_id=USER)
        await wait_text(api, CHAT, texts.persona_shown(PIRATE, settings.system_prompt))
        api.push_message(CHAT, "/reset", user_id=USER)
        await wait_text(api, CHAT, texts.RESET_DONE + texts.PERSONA_KEPT)
        api.push_message(CHAT, "/persona", user_id=USER)
        await wait_text(api, CHAT, texts.persona_shown(PIRATE, settings.system_prompt), 2)
        api.push_message(CHAT, "/persona reset", user_id=USER)
        await wait_text(api, CHAT, texts.PERSONA_RESET)
        api.push_message(CHAT, "/persona", user_id=USER)
        await wait_text(api, CHAT, default, 2)
        assert await bot.services.history.persona(ConversationKey(CHAT)) is None


async def test_a_groups_persona_is_for_its_administrators_and_follows_an_upgrade(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    group, supergroup = -4545, -1004545
    api.chat_types[group] = "group"
    settings = bot_settings(api, int4_store[0].root, tmp_path, allowed_user_ids=f"{USER},{OTHER}")
    async with running_bot(api, settings) as bot:
        history = bot.services.history
        api.push_message(group, f"/persona {PIRATE}", user_id=OTHER)
        await wait_text(api, group, texts.PERSONA_ADMINS_ONLY)
        api.push_message(group, "/persona", user_id=OTHER)  # anyone may see it
        await wait_text(api, group, texts.persona_shown(None, settings.system_prompt))
        assert await history.persona(ConversationKey(group)) is None
        assert api.calls_of("getChatMember", group), "Telegram was asked who administers the group"

        api.set_member(group, USER, "administrator")
        api.push_message(group, "/persona You are terse.", user_id=USER)
        await wait_text(api, group, texts.PERSONA_SET)
        api.push_message(group, f"/persona {PIRATE}", user_id=ADMIN)  # the bot's admin, a plain member here
        await wait_text(api, group, texts.PERSONA_SET, 2)
        assert await history.persona(ConversationKey(group)) == PIRATE

        api.migrate(group, supergroup)  # nothing but the persona is known of this group
        api.push_message(group, None, user_id=OTHER, extra={"migrate_to_chat_id": supergroup})
        api.push_message(supergroup, None, user_id=OTHER, extra={"migrate_from_chat_id": group})
        deadline = time.monotonic() + 30
        while not await history.has_chat(supergroup):  # updates are handled concurrently
            assert time.monotonic() < deadline, "the persona did not follow the upgrade"
            await asyncio.sleep(0.05)
        api.push_message(supergroup, "/persona", user_id=OTHER)
        await wait_text(api, supergroup, texts.persona_shown(PIRATE, settings.system_prompt))
        assert await history.persona(ConversationKey(group)) is None


async def test_a_new_persona_starts_the_prompt_anew_and_keeps_the_conversation(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    settings = bot_settings(api, int4_store[0].root, tmp_path)
    async with running_bot(api, settings) as bot:
        engine, history, key = bot.services.engine, bot.services.history, ConversationKey(CHAT)
        assert engine is not None
        api.push_message(CHAT, photo=photo_bytes(), caption="What is in this picture?", user_id=USER)
        await wait_answers(api, CHAT, 1)
        await api.wait_for(lambda: engine.stats.prepared >= 1, 30, "the answer read ahead of the next question")
        before = await model_view(bot.services, engine, key)
        stored = await stored_messages(history, key)

        api.push_message(CHAT, f"/persona {PIRATE}", user_id=USER)
        await wait_text(api, CHAT, texts.PERSONA_SET)
        await api.wait_for(lambda: engine.stats.prepared >= 2, 30, "the conversation read after the new persona")
        after = await model_view(bot.services, engine, key)
        assert await stored_messages(history, key) == stored, "the conversation is kept"
        assert [t.message for t in after.turns] == [t.message for t in before.turns]
        assert (before.system_prompt, after.system_prompt) == (
            settings.system_prompt,
            PIRATE,
        )
        held = await engine.prepare(key, after.turns, system_prompt=after.system_prompt)
        assert held.error is None and held.pieces == 0, "the model has read it already, after the new persona"

        api.push_message(CHAT, "And the square?", user_id=USER)
        await api.wait_for(lambda: len(with_retry(api, CHAT)) == 2, 30, "the follow-up's answer")
        assert engine.stats.replays == 0, "the follow-up did not read the photo again"
        assert len(await stored_messages(history, key)) == 4
        view = await model_view(bot.services, engine, key)
        await api.wait_for(lambda: engine.stats.prepared >= 4, 30, "the second answer read ahead")
        other = await engine.prepare(key, view.turns, system_prompt=settings.system_prompt)
    assert other.error is None and other.pieces >= 1, "another system prompt is another prefix, read anew"
