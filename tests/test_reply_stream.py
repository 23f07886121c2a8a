"""Streaming replies against the stand-in Bot API: pacing, long answers, deleted messages, blocked bots, and
the record that lets recovery repair every part."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from telegram import Bot
from telegram.error import BadRequest, InvalidToken
from telegram.ext import ExtBot
from telegram.request import HTTPXRequest

from bot.output.buttons import stop_keyboard
from bot.output.drafts import Drafts
from bot.output.edits import CURSOR
from bot.output.formatting import plain_parts, utf16_len
from bot.output.pace import Pacer
from bot.output.reply_stream import ReplyStream
from bot.output.retries import Postponed, Undeliverable
from devkit.bot_api_server import FakeBotApi

CHAT = 501
LONG = ("Phi-3 looks at the photo 😀 and writes. " * 90 + "\n") * 3  # three messages


def words(text: str) -> str:
    return "".join(text.removesuffix(CURSOR.strip()).split())


@dataclass
class Journal:
    """A stream's ``record`` that checks, every time it is called, that the chat shows nothing the previous
    record did not have: no message id (but the one just sent, recorded now) and no word."""

    api: FakeBotApi
    chat: int = CHAT
    entries: list[tuple[str, list[int]]] = field(default_factory=list)
    statuses: tuple[str, ...] = ("…",)  # texts that say what is happening, not words of the answer

    async def __call__(self, text: str, message_ids: Sequence[int]) -> None:
        self.check(allowed_new=1)
        self.entries.append((text, list(message_ids)))

    def check(self, allowed_new: int = 0) -> None:
        recorded_text, recorded_ids = self.entries[-1] if self.entries else ("", [])
        shown = [m for m in self.api.messages(self.chat) if m.text not in self.statuses]
        unknown = [m.message_id for m in self.api.messages(self.chat) if m.message_id not in recorded_ids]
        assert len(unknown) <= allowed_new, f"messages shown before they were recorded: {unknown}"
        assert words(recorded_text).startswith("".join(words(m.text) for m in shown)), "words shown unrecorded"
        draft = self.api.shown_draft(self.chat)
        if draft is not None and draft.text not in ("", *self.statuses):
            assert words(draft.text) in words(recorded_text), "a draft showed words unrecorded"


@pytest.fixture
async def bot(api: FakeBotApi) -> AsyncIterator[Bot]:
    client = ExtBot(api.token, base_url=api.base_url, base_file_url=api.base_file_url, rate_limiter=Pacer())
    async with client:
        yield client


@pytest.fixture
def journal(api: FakeBotApi) -> Journal:
    return Journal(api)


async def test_edits_are_paced_and_skip_unchanged_text(api: FakeBotApi, bot: Bot, journal: Journal) -> None:
    stream = ReplyStream(bot, CHAT, journal, interval=0.0)
    await stream.start("…")
    await stream.update("Hello")
    await stream.update("Hello")  # unchanged: no request at all
    await stream.update("Hello world")
    paced = ReplyStream(bot, CHAT + 1, Journal(api, CHAT + 1), interval=60.0)
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
    place = "⏳ You're #2 in line."
    stream = ReplyStream(bot, CHAT, Journal(api, statuses=("…", place)), interval=0.0)
    await stream.start("…")
    await stream.status(place)
    assert api.visible_text(CHAT) == ["⏳ You're #2 in line."]
    await stream.update("Answer")
    await stream.finish("Answer")
    assert api.visible_text(CHAT) == ["Answer"]


async def test_long_answers_continue_in_new_messages(api: FakeBotApi, bot: Bot, journal: Journal) -> None:
    stream = ReplyStream(bot, CHAT, journal, interval=0.0, reply_to=None)
    await stream.start("…")
    text = LONG
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


async def test_a_deleted_message_is_replaced_not_lost(api: FakeBotApi, bot: Bot, journal: Journal) -> None:
    stream = ReplyStream(bot, CHAT, journal, interval=0.0)
    await stream.start("…")
    await stream.update("First words")
    api.delete_message_as_user(CHAT, stream.message_ids[0])
    await stream.update("First words and more")  # finds the message gone
    await stream.update("First words and more still")
    assert api.visible_text(CHAT) == ["First words and more still ▌"], "streaming goes on in a new message"
    await stream.finish("First words and more, the end.")
    assert api.visible_text(CHAT) == ["First words and more, the end."]


async def test_markdown_and_html_noise_never_breaks_the_final_text(api: FakeBotApi, bot: Bot, journal: Journal) -> None:
    noisy = "**unclosed bold, _half italic, `code, <b>html</b> & <i>, [link](, 1*2=3_4, \\escaped\\, ~~, ||, >quote"
    stream = ReplyStream(bot, CHAT, journal, interval=0.0)
    await stream.start("…")
    await stream.finish(noisy)
    [message] = api.messages(CHAT)
    for word in ("unclosed", "half", "code", "escaped", "quote"):
        assert word in message.text


async def test_a_blocked_bot_gives_up_cleanly(api: FakeBotApi, bot: Bot, journal: Journal) -> None:
    stream = ReplyStream(bot, CHAT, journal, interval=0.0)
    await stream.start("…")
    api.fail_next("editMessageText", times=100, kind="403")
    await stream.update("partial")
    with pytest.raises(Undeliverable):
        await stream.finish("final text")
    assert len(api.calls_of("editMessageText")) <= 2, "no retry loop against a blocked chat"


async def test_server_errors_are_retried_for_the_final_text(api: FakeBotApi, bot: Bot, journal: Journal) -> None:
    stream = ReplyStream(bot, CHAT, journal, interval=0.0)
    await stream.start("…")
    api.fail_next("editMessageText", times=2, kind="5xx")
    await stream.finish("delivered after two 502s")
    assert api.visible_text(CHAT) == ["delivered after two 502s"]


async def test_a_group_migrated_mid_answer_gets_it_in_the_supergroup(api: FakeBotApi, bot: Bot) -> None:
    group, supergroup = -4242, -1004242
    stream = ReplyStream(bot, group, Journal(api, group), reply_to=5, interval=0.0)
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
        rate_limiter=Pacer(),
    )
    async with impatient:
        stream = ReplyStream(impatient, CHAT, Journal(api), interval=0.0)
        await stream.start("…")
        api.fail_next("editMessageText", times=2, kind="slow", delay=1.0)
        await stream.update("streamed while the server is slow")  # times out, skipped
        await stream.finish("the final text, after timeouts")
    assert api.visible_text(CHAT) == ["the final text, after timeouts"]
    assert len(api.calls_of("editMessageText")) <= 5, "retries are spaced, not a tight loop"


async def stream_in_steps(stream: ReplyStream, text: str, step: int = 700) -> None:
    for end in range(step, len(text) + step, step):
        await stream.update(text[:end])


async def test_every_message_and_word_is_recorded_before_it_is_shown(
    api: FakeBotApi, bot: Bot, journal: Journal
) -> None:
    """What recovery after kill -9 relies on: the database always covers every part the chat shows."""
    stream = ReplyStream(bot, CHAT, journal, interval=0.0)
    await stream.start("…")
    assert journal.entries == [("", stream.message_ids)], "the placeholder's id is recorded as soon as it exists"
    await stream_in_steps(stream, LONG)
    journal.check()
    ids = await stream.finish(LONG)
    journal.check()
    assert len(ids) >= 3 and journal.entries[-1] == (LONG, ids)
    assert len({tuple(ids) for _, ids in journal.entries}) == len(ids), "each new part recorded once, when sent"


async def test_a_part_boundary_costs_no_wasted_edit(api: FakeBotApi, bot: Bot, journal: Journal) -> None:
    stream = ReplyStream(bot, CHAT, journal, interval=0.0)
    await stream.start("…")
    await stream_in_steps(stream, LONG)
    await stream.finish(LONG)
    assert len(api.messages(CHAT)) >= 3
    refused = [c.status for c in api.calls if c.method == "editMessageText" and c.status != 200]
    assert refused == [], "no edit Telegram answers with 'message is not modified'"


async def test_a_deleted_first_part_comes_back_with_the_later_parts_in_order(
    api: FakeBotApi, bot: Bot, journal: Journal
) -> None:
    question = 77
    stream = ReplyStream(bot, CHAT, journal, reply_to=question, interval=0.0)
    await stream.start("…")
    await stream_in_steps(stream, LONG[:9000])
    first, *later = stream.message_ids
    assert len(later) == 2
    api.delete_message_as_user(CHAT, first)
    await stream.update(LONG[:10000])  # finds part 1 gone
    ids = await stream.finish(LONG)
    shown = api.messages(CHAT)
    assert [m.message_id for m in shown] == ids and not {first, *later} & set(ids), "every part sent anew"
    assert words("".join(m.text for m in shown)) == words(LONG), "the parts read in order"
    assert [m.reply_to for m in shown] == [question, *ids[:-1]], "each part replies to the one before it"
    assert journal.entries[-1] == (LONG, ids)


async def test_a_shutdown_does_not_wait_out_flood_control(api: FakeBotApi, bot: Bot, journal: Journal) -> None:
    """Docker kills a container 10 s after SIGTERM: the final text is tried, then left to recovery."""
    stopping = asyncio.Event()
    stream = ReplyStream(bot, CHAT, journal, interval=0.0, stopping=stopping)
    await stream.start("…")
    await stream.update("Half of the answer")
    api.storm("editMessageText", 120, retry_after=30)
    await stream.update("Half of the answer and more")  # flood control: the stream waits 30 s
    started = time.monotonic()
    asyncio.get_running_loop().call_later(0.5, stopping.set)
    with pytest.raises(Postponed):
        await stream.finish("Half of the answer and more, stopped.")
    assert time.monotonic() - started < 2.0
    assert journal.entries[-1] == ("Half of the answer and more, stopped.", stream.message_ids), "recorded for recovery"
    assert api.visible_text(CHAT) == ["Half of the answer ▌"]


@pytest.fixture
def private(api: FakeBotApi) -> int:
    """CHAT as the private chat Telegram knows it (drafts go to private chats only)."""
    api.chat_types[CHAT] = "private"
    return CHAT


async def test_a_long_drafted_answer_shows_the_part_being_written_then_is_sent_in_parts(
    api: FakeBotApi, bot: Bot, journal: Journal, private: int
) -> None:
    question = 77
    stream = ReplyStream(bot, private, journal, reply_to=question, interval=0.0, drafts=Drafts(interval=0.0))
    await stream.start("…")
    await stream_in_steps(stream, LONG)
    journal.check()
    ids = await stream.finish(LONG)
    drafts = api.draft_texts(private)
    assert drafts[0] == "" and len(drafts) >= 4, drafts
    assert all(0 < utf16_len(text) <= 4096 for text in drafts[1:]), "a draft holds one part"
    assert drafts[-1] == plain_parts(LONG)[-1].text, "past the limit, the draft shows the part being written"
    shown = api.messages(private)
    assert len(shown) >= 3 and [m.message_id for m in shown] == ids and journal.entries[-1] == (LONG, ids)
    assert words("".join(m.text for m in shown)) == words(LONG), "every word, in order"
    assert [m.reply_to for m in shown] == [question, *ids[:-1]]
    assert all(m.edits == [m.text] for m in shown) and api.calls_of("editMessageText") == [], "sent, never edited"
    assert api.shown_draft(private) is None, "the messages took the draft's place"


async def test_a_draft_is_refreshed_before_telegram_drops_it_and_not_after_the_answer(
    api: FakeBotApi, bot: Bot, private: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new photo can take a minute before the first word; a draft lasts about 30 s."""
    monkeypatch.setattr("bot.output.drafts.DRAFT_REFRESH_SECONDS", 0.2)
    api.draft_lifetime = 0.3
    place = "⏳ You're #2 in line."
    stream = ReplyStream(bot, private, Journal(api, statuses=("…", place)), interval=0.0, drafts=Drafts())
    await stream.start("…")
    await stream.status(place)
    await asyncio.sleep(1.0)
    draft = api.shown_draft(private)
    assert draft is not None and draft.text == place, "still shown, five lifetimes later"
    assert api.draft_texts(private).count(place) >= 4
    await stream.finish("The answer.")
    sent = len(api.calls_of("sendMessageDraft"))
    await asyncio.sleep(0.5)
    assert len(api.calls_of("sendMessageDraft")) == sent, "no draft after the final text"
    assert api.visible_text(private) == ["The answer."]


async def test_a_server_without_drafts_gets_a_placeholder_and_edits_from_then_on(
    api: FakeBotApi, bot: Bot, journal: Journal, private: int
) -> None:
    api.forget("sendMessageDraft")
    drafts = Drafts()
    stream = ReplyStream(bot, private, journal, interval=0.0, drafts=drafts, stop_button=stop_keyboard(1))
    await stream.start("…")
    [placeholder] = api.messages(private)
    assert placeholder.text == "…" and placeholder.reply_markup is not None, "a message with the Stop button"
    assert not drafts.available
    await stream.update("Words")
    await stream.finish("Words, done.")
    assert placeholder.edits == ["…", "Words ▌", "Words, done."]
    api.chat_types[CHAT + 1] = "private"
    later = ReplyStream(bot, CHAT + 1, Journal(api, CHAT + 1), interval=0.0, drafts=drafts)
    await later.start("…")
    assert len(api.calls_of("sendMessageDraft")) == 1, "the server is not asked again"
    assert [m.text for m in api.messages(CHAT + 1)] == ["…"]


async def test_the_stand_in_refuses_drafts_as_telegram_does(api: FakeBotApi, bot: Bot, private: int) -> None:
    group = -100777
    api.chat_types[group] = "supergroup"
    with pytest.raises(BadRequest, match=r"(?i)textdraft_peer_invalid"):
        await bot.send_message_draft(group, 1, "hello")
    with pytest.raises(BadRequest, match=r"(?i)random_id_invalid"):
        await bot.send_message_draft(private, 0, "hello")
    with pytest.raises(BadRequest, match=r"(?i)too long"):
        await bot.send_message_draft(private, 1, "x" * 4097)
    assert await bot.send_message_draft(private, 1, "")  # Telegram shows "Thinking…"
    assert await bot.send_message_draft(private, 1, "x" * 4096)
    assert api.draft_texts(private) == ["", "x" * 4096] and api.draft_texts(group) == []
    await bot.send_message(private, "a message")
    assert api.shown_draft(private) is None, "a message from the bot ends the draft"
    await bot.send_message_draft(private, 2, "again")
    api.draft_lifetime = 0.1
    await asyncio.sleep(0.2)
    assert api.shown_draft(private) is None, "a draft not refreshed expires"
    api.forget("sendMessageDraft")
    with pytest.raises(InvalidToken, match=r"(?i)not found"):  # PTB's name for any 404
        await bot.send_message_draft(private, 1, "on an older server")
