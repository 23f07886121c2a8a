"""Streaming replies against the stand-in Bot API: pacing, long answers, deleted messages, blocked bots."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from telegram import Bot
from telegram.ext import AIORateLimiter, ExtBot
from telegram.request import HTTPXRequest

from bot.formatting import utf16_len
from bot.reply_stream import ReplyStream, Undeliverable
from tests.support.bot_api_server import FakeBotApi

CHAT = 501


@pytest.fixture
async def bot(api: FakeBotApi) -> AsyncIterator[Bot]:
    client = ExtBot(api.token, base_url=api.base_url, base_file_url=api.base_file_url, rate_limiter=AIORateLimiter())
    async with client:
        yield client


async def test_edits_are_paced_and_skip_unchanged_text(api: FakeBotApi, bot: Bot) -> None:
    stream = ReplyStream(bot, CHAT, interval=0.0)
    await stream.start("…")
    await stream.update("Hello")
    await stream.update("Hello")  # unchanged: no request at all
    await stream.update("Hello world")
    paced = ReplyStream(bot, CHAT + 1, interval=60.0)
    await paced.start("…")
    await paced.update("too soon")
    assert len(api.calls_of("editMessageText", CHAT)) == 2
    assert api.calls_of("editMessageText", CHAT + 1) == []
    ids = await stream.finish("Hello **world**")
    [message] = api.messages(CHAT)
    assert ids == [message.message_id]
    assert message.text == "Hello world" and message.entities == [{"type": "bold", "offset": 6, "length": 5}]
    assert message.reply_markup is None, "the Stop button goes away at the end"


async def test_queue_position_is_shown_until_text_arrives(api: FakeBotApi, bot: Bot) -> None:
    stream = ReplyStream(bot, CHAT, interval=0.0)
    await stream.start("…")
    await stream.status("⏳ You're #2 in line.")
    assert api.visible_text(CHAT) == ["⏳ You're #2 in line."]
    await stream.update("Answer")
    await stream.finish("Answer")
    assert api.visible_text(CHAT) == ["Answer"]


async def test_long_answers_continue_in_new_messages(api: FakeBotApi, bot: Bot) -> None:
    stream = ReplyStream(bot, CHAT, interval=0.0, reply_to=None)
    await stream.start("…")
    paragraph = "Phi-3 looks at the photo 😀 and writes. " * 60 + "\n"
    text = paragraph * 5
    for end in range(0, len(text), 1500):
        await stream.update(text[: end + 1500])
    ids = await stream.finish(text)
    messages = api.messages(CHAT)
    assert len(messages) >= 3 and ids == [m.message_id for m in messages]
    assert all(utf16_len(m.text) <= 4096 for m in messages)
    assert "".join(m.text for m in messages).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(
        " ", ""
    )
    assert messages[1].reply_to == messages[0].message_id, "each part replies to the previous one"


async def test_a_deleted_message_is_replaced_not_lost(api: FakeBotApi, bot: Bot) -> None:
    stream = ReplyStream(bot, CHAT, interval=0.0)
    await stream.start("…")
    await stream.update("First words")
    api.delete_message_as_user(CHAT, stream.message_ids[0])
    await stream.update("First words and more")  # finds the message gone
    await stream.update("First words and more still")
    assert api.visible_text(CHAT) == ["First words and more still ▌"], "streaming goes on in a new message"
    await stream.finish("First words and more, the end.")
    assert api.visible_text(CHAT) == ["First words and more, the end."]


async def test_markdown_and_html_noise_never_breaks_the_final_text(api: FakeBotApi, bot: Bot) -> None:
    noisy = "**unclosed bold, _half italic, `code, <b>html</b> & <i>, [link](, 1*2=3_4, \\escaped\\, ~~, ||, >quote"
    stream = ReplyStream(bot, CHAT, interval=0.0)
    await stream.start("…")
    await stream.finish(noisy)
    [message] = api.messages(CHAT)
    for word in ("unclosed", "half", "code", "escaped", "quote"):
        assert word in message.text


async def test_a_blocked_bot_gives_up_cleanly(api: FakeBotApi, bot: Bot) -> None:
    stream = ReplyStream(bot, CHAT, interval=0.0)
    await stream.start("…")
    api.fail_next("editMessageText", times=100, kind="403")
    await stream.update("partial")
    with pytest.raises(Undeliverable):
        await stream.finish("final text")
    assert len(api.calls_of("editMessageText")) <= 2, "no retry loop against a blocked chat"


async def test_server_errors_are_retried_for_the_final_text(api: FakeBotApi, bot: Bot) -> None:
    stream = ReplyStream(bot, CHAT, interval=0.0)
    await stream.start("…")
    api.fail_next("editMessageText", times=2, kind="5xx")
    await stream.finish("delivered after two 502s")
    assert api.visible_text(CHAT) == ["delivered after two 502s"]


async def test_a_group_migrated_mid_answer_gets_it_in_the_supergroup(api: FakeBotApi, bot: Bot) -> None:
    group, supergroup = -4242, -1004242
    stream = ReplyStream(bot, group, reply_to=5, interval=0.0)
    await stream.start("…")
    await stream.update("Half of the")
    api.migrate(group, supergroup)
    await stream.update("Half of the answer")
    await stream.update("Half of the answer and")
    ids = await stream.finish("Half of the answer and the rest.")
    assert api.visible_text(supergroup) == ["Half of the answer and the rest."]
    assert ids == [m.message_id for m in api.messages(supergroup)]
    failed = [c for c in api.calls if c.status != 200]
    assert 1 <= len(failed) <= 3, f"no retry loop against the old group: {[(c.method, c.status) for c in failed]}"


async def test_a_timed_out_edit_is_retried_and_the_final_text_lands(api: FakeBotApi) -> None:
    impatient = ExtBot(
        api.token,
        base_url=api.base_url,
        base_file_url=api.base_file_url,
        request=HTTPXRequest(read_timeout=0.3, write_timeout=0.3, connect_timeout=0.3),
    )
    async with impatient:
        stream = ReplyStream(impatient, CHAT, interval=0.0)
        await stream.start("…")
        api.fail_next("editMessageText", times=2, kind="slow", delay=1.0)
        await stream.update("streamed while the server is slow")  # times out, skipped
        await stream.finish("the final text, after timeouts")
    assert api.visible_text(CHAT) == ["the final text, after timeouts"]
    assert len(api.calls_of("editMessageText")) <= 5, "retries are spaced, not a tight loop"
