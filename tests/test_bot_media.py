"""PDFs, videos, GIFs and video messages asked about over HTTP, through the real bot, with the tiny model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import texts
from bot.history import ConversationKey
from bot.output import buttons
from devkit.bot_api_server import FakeBotApi
from devkit.harness import (
    USER,
    RunningBot,
    bot_settings,
    button,
    finished,
    press,
    running_bot,
    stored_messages,
    wait_answers,
)
from devkit.media_files import clip, encrypted_pdf, gif, pdf
from model_store.store import ModelEntry, ModelStore

CHAT = USER
GROUP = -100777


@pytest.fixture
async def bot(api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path) -> AsyncIterator[RunningBot]:
    settings = bot_settings(
        api, int4_store[0].root, tmp_path, stream_drafts=False, user_requests_per_minute=600, video_frames=4
    )
    async with running_bot(api, settings) as running:
        yield running


def last_answer(api: FakeBotApi, chat: int) -> str:
    return api.messages(chat)[-1].text


async def follow_up(bot: RunningBot, chat: int, answers: int, **options: object) -> None:
    """A text question after the first answer is answered with the same images in view."""
    bot.api.push_message(chat, "And what colour is it?", user_id=USER, **options)  # type: ignore[arg-type]
    await wait_answers(bot.api, chat, answers)
    stored = await stored_messages(bot.services.history, ConversationKey(chat))
    assert stored[-2].text == "And what colour is it?" and stored[-1].role == "assistant"


async def test_a_pdf_with_a_question_naming_a_page_is_answered_about_that_page(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(
        CHAT, document=(pdf(5), "report.pdf", "application/pdf"), caption="What is on page 4?", user_id=USER
    )
    await wait_answers(api, CHAT, 1)
    assert last_answer(api, CHAT).endswith("📄 I looked at page 4 of a 5-page PDF.")
    [question, _] = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert question.text == "[The image is page 4 of a 5-page PDF.]\nWhat is on page 4?"
    assert len(question.images) == 1 and question.images[0].mime_type == "image/png"
    await follow_up(bot, CHAT, 2)
    assert bot.services.engine is not None and bot.services.engine.stats.replays == 0


async def test_a_pdf_without_named_pages_shows_the_first_ones(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(
        GROUP, document=(pdf(9), "deck.pdf", "application/pdf"), caption="@phi3_test_bot summarise", user_id=USER
    )
    await wait_answers(api, GROUP, 1)
    [question, _] = await stored_messages(bot.services.history, ConversationKey(GROUP))
    assert len(question.images) == 4 and last_answer(api, GROUP).endswith("📄 I looked at pages 1-4 of a 9-page PDF.")


async def test_a_video_sent_alone_is_read_then_asked_about_and_reset_forgets_its_frames(bot: RunningBot) -> None:
    api, engine = bot.api, bot.services.engine
    assert engine is not None
    api.push_media(CHAT, "video", clip(80, 8), duration=10, user_id=USER)
    await api.wait_for(lambda: "I'm looking at" in " ".join(api.visible_text(CHAT)), 20, "the video is acknowledged")
    assert api.visible_text(CHAT)[0] == texts.kept("4 frames of a 0:10 video")
    await api.wait_for(lambda: engine.stats.prepared >= 1, 60, "the frames read ahead")
    api.push_message(CHAT, "What happens in it?", user_id=USER)
    await wait_answers(api, CHAT, 1)
    stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert stored[0].text == "[The images are 4 frames of a 0:10 video, at 0:01, 0:04, 0:06, 0:09.]"
    assert len(stored[0].images) == 4
    await follow_up(bot, CHAT, 2)
    assert (await bot.services.history.stats()).images == 4
    api.push_message(CHAT, "/reset", user_id=USER)
    await api.wait_for(lambda: texts.RESET_DONE in api.visible_text(CHAT), 20, "reset")
    assert (await bot.services.history.stats()).images == 0


async def test_a_gif_in_a_group_is_answered_with_its_frames(bot: RunningBot) -> None:
    api = bot.api
    api.push_media(GROUP, "animation", gif(6, 500), duration=3, caption="@phi3_test_bot what moves here?", user_id=USER)
    await wait_answers(api, GROUP, 1)
    answer = api.messages(GROUP)[-1]
    assert "🎞 I looked at 4 frames" in answer.text
    [question, _] = await stored_messages(bot.services.history, ConversationKey(GROUP))
    assert len(question.images) == 4
    await follow_up(bot, GROUP, 2, chat_type="supergroup", reply_to=api.bot_message_dict(GROUP, answer.message_id))


async def test_a_video_message_is_kept_and_its_follow_ups_answered(bot: RunningBot) -> None:
    api = bot.api
    api.push_media(CHAT, "video_note", clip(16, 8, size=(240, 240)), duration=2, width=240, user_id=USER)
    await api.wait_for(lambda: "I'm looking at" in " ".join(api.visible_text(CHAT)), 20, "the video message is kept")
    assert api.visible_text(CHAT)[0] == texts.kept("4 frames of a 2.0 s video message")
    api.push_message(CHAT, "Who is speaking?", user_id=USER)
    await wait_answers(api, CHAT, 1)
    await follow_up(bot, CHAT, 2)


async def test_a_clip_longer_than_the_limit_is_refused_before_downloading(bot: RunningBot) -> None:
    api = bot.api
    api.push_media(CHAT, "video", clip(8, 8), duration=3_600, caption="What happens?", user_id=USER)
    await api.wait_for(lambda: bool(api.visible_text(CHAT)), 20, "a reply")
    assert api.visible_text(CHAT) == ["That video is 1:00:00 long; I can look at clips of up to 10:00."]
    assert not api.calls_of("getFile"), "nothing was downloaded"


@pytest.mark.parametrize(
    ("media", "reply"),
    [
        ((encrypted_pdf(), "secret.pdf", "application/pdf"), "That PDF is protected by a password"),
        ((pdf(2)[:300], "cut.pdf", "application/pdf"), "I couldn't read that PDF"),
        ((b"\x00" * 5000, "clip.mp4", "video/mp4"), "I couldn't read that clip"),
        ((pdf(3), "report.pdf", "application/pdf"), "This PDF has 3 pages, so I can't look at page 7."),
    ],
)
async def test_unreadable_pdfs_and_clips_get_a_kind_reply_and_leave_no_trace(
    bot: RunningBot, media: tuple[bytes, str, str], reply: str
) -> None:
    api = bot.api
    api.push_message(GROUP, "@phi3_test_bot hello", user_id=USER)  # answered meanwhile
    api.push_message(CHAT, document=media, caption="What does page 7 say?", user_id=USER)
    await api.wait_for(lambda: bool(api.visible_text(CHAT)), 20, "a reply")
    assert api.visible_text(CHAT)[0].startswith(reply)
    await wait_answers(api, GROUP, 1)
    assert await stored_messages(bot.services.history, ConversationKey(CHAT)) == []


async def test_a_question_naming_pages_not_in_view_is_told_how_to_ask_and_a_reply_to_the_pdf_reads_them(
    bot: RunningBot,
) -> None:
    api = bot.api
    document = api.push_message(CHAT, document=(pdf(6), "deck.pdf", "application/pdf"), user_id=USER)
    await api.wait_for(lambda: bool(api.visible_text(CHAT)), 20, "the PDF is acknowledged")
    assert api.visible_text(CHAT)[0] == texts.kept("pages 1-4 of a 6-page PDF")
    api.push_message(CHAT, "What does page 6 say?", user_id=USER)
    await api.wait_for(lambda: len(api.visible_text(CHAT)) == 2, 20, "a note")
    assert api.visible_text(CHAT)[1] == texts.pages_not_in_view("pages 1-4", 6)
    api.push_message(CHAT, "What does page 6 say?", user_id=USER, reply_to=document)
    await api.wait_for(lambda: len(api.messages(CHAT)) == 3 and finished(api.messages(CHAT)[2]), 60, "the answer")
    assert last_answer(api, CHAT).endswith("📄 I looked at page 6 of a 6-page PDF.")
    stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert [len(m.images) for m in stored] == [4, 1, 0]  # the note put nothing in the history


async def test_the_describe_button_under_a_kept_pdf_asks_about_its_pages(bot: RunningBot) -> None:
    api = bot.api
    sent = api.push_message(CHAT, document=(pdf(2), "two.pdf", "application/pdf"), user_id=USER)
    await api.wait_for(lambda: bool(api.visible_text(CHAT)), 20, "the PDF is acknowledged")
    [kept] = api.messages(CHAT)
    assert button(kept, buttons.DESCRIBE) == f"describe:pdf:{sent['message_id']}", "it names the PDF's message"
    press(api, kept, buttons.DESCRIBE, user_id=USER)
    await wait_answers(api, CHAT, 2)
    stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert [(m.text, len(m.images)) for m in stored[:2]] == [
        ("[The images are pages 1 and 2 of a 2-page PDF.]", 2),
        (texts.SUMMARISE_PAGES, 0),
    ]


async def test_a_retried_pdf_answer_still_says_which_pages_it_looked_at(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(CHAT, document=(pdf(3), "three.pdf", "application/pdf"), caption="Page 2?", user_id=USER)
    await wait_answers(api, CHAT, 1)
    api.push_message(CHAT, "/retry", user_id=USER)
    await wait_answers(api, CHAT, 2)
    first, retried = api.messages(CHAT)
    assert first.message_id != retried.message_id
    for answer in (first, retried):
        assert answer.text.endswith("📄 I looked at page 2 of a 3-page PDF."), answer.text


async def test_a_gif_sent_as_a_file_is_read_as_frames(bot: RunningBot) -> None:
    api = bot.api
    api.push_message(CHAT, document=(gif(12, 250), "loop.gif", "image/gif"), caption="What moves?", user_id=USER)
    await wait_answers(api, CHAT, 1)
    assert "🎞 I looked at 4 frames of a 3.0 s GIF" in last_answer(api, CHAT)


async def test_a_sticker_is_a_reaction_and_a_question_replying_to_a_video_sticker_reads_it(bot: RunningBot) -> None:
    api = bot.api
    sticker = api.push_media(CHAT, "sticker", clip(24, 8, (128, 128), "libvpx-vp9", "webm"), user_id=USER)
    api.push_message(GROUP, "@phi3_test_bot hello", user_id=USER)  # to know the sticker was handled
    await wait_answers(api, GROUP, 1)
    assert api.visible_text(CHAT) == [], "a sticker alone gets no answer"
    api.push_message(CHAT, "What is this sticker?", user_id=USER, reply_to=sticker)
    await wait_answers(api, CHAT, 1)
    [question, _] = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert question.text.startswith("[The images are 4 frames of a 3.0 s sticker") and len(question.images) == 4
