"""What the history keeps of the images people send, through the real bot over HTTP (issue 23, item 4): a
bounded copy, the same pixels for the first answer and every later one, limits with the oldest pruned first,
a clear word when a question is about a pruned photo, and a full disk that loses nothing."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot import texts
from bot.answers.context_view import model_view
from bot.history import ConversationKey, HistoryStore, NewImage
from bot.media.image_cache import PreparedImageCache
from devkit.bot_api_server import FakeBotApi
from devkit.harness import (
    USER,
    RunningBot,
    bot_settings,
    running_bot,
    stored_answers,
    stored_messages,
    wait_answers,
)
from devkit.hostile_images import png_40_megapixels_rgba
from devkit.media_files import clip
from engine.images import PreparedImage
from model_store.store import ModelEntry, ModelStore

CHAT = USER
GROUP = -100555


def noise_jpeg(seed: int, size: tuple[int, int] = (2000, 1500)) -> bytes:
    """A photo that does not compress: its copy is about a megabyte."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


@pytest.fixture
async def bot(api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path) -> AsyncIterator[RunningBot]:
    settings = bot_settings(
        api, int4_store[0].root, tmp_path, stream_drafts=False, user_requests_per_minute=600, stored_images_mb=1
    )
    async with running_bot(api, settings) as running:
        yield running


async def test_a_photo_is_stored_as_the_copy_the_model_saw_first_and_sees_after(bot: RunningBot) -> None:
    api, engine = bot.api, bot.services.engine
    assert engine is not None
    api.push_message(CHAT, photo=noise_jpeg(1, (3000, 2000)), caption="What is it?", user_id=USER)
    await wait_answers(api, CHAT, 1)
    [question, _] = await stored_messages(bot.services.history, ConversationKey(CHAT))
    [image] = question.images
    assert image.bounded and image.mime_type == "image/jpeg" and size_of(image.data) == (1344, 896)
    assert image.sha256 == hashlib.sha256(image.data).hexdigest()
    api.push_message(CHAT, "And the colours?", user_id=USER)
    await wait_answers(api, CHAT, 2)
    assert engine.stats.replays == 0, "the follow-up's prompt starts as the first answer's: the same image"
    scan = (png_40_megapixels_rgba(), "scan.png", "image/png")
    api.push_message(GROUP, document=scan, caption="@phi3_test_bot what is it?", user_id=USER)
    await wait_answers(api, GROUP, 1)
    [question, _] = await stored_messages(bot.services.history, ConversationKey(GROUP))
    assert [(i.mime_type, size_of(i.data)) for i in question.images] == [("image/png", (1344, 840))]


async def test_a_question_about_a_pruned_photo_asks_for_it_again_and_a_reply_to_it_reads_it_again(
    bot: RunningBot,
) -> None:
    """STORED_IMAGES_MB=1 holds one of these photos' copies: the second chat's photo prunes the first's."""
    api, history = bot.api, bot.services.history
    sent = api.push_message(CHAT, photo=noise_jpeg(2), caption="What is it?", user_id=USER)
    await wait_answers(api, CHAT, 1)
    api.push_message(GROUP, photo=noise_jpeg(3), caption="@phi3_test_bot and this?", user_id=USER)
    await wait_answers(api, GROUP, 1)
    [question, answer] = await stored_messages(history, ConversationKey(CHAT))
    assert (question.text, question.images, question.images_pruned) == ("What is it?", (), 1), "the text stays"
    assert answer.text, "and so does the answer"
    assert bot.services.engine is not None
    view = await model_view(bot.services, bot.services.engine, ConversationKey(CHAT))
    assert view.turns[0].text == f"{texts.images_gone(1)}\nWhat is it?" and view.turns[0].images == ()

    api.push_message(CHAT, "/retry", user_id=USER)
    await api.wait_for(lambda: texts.IMAGE_GONE in api.visible_text(CHAT), 30, "a retry is asked for the photo")
    assert len(await stored_messages(history, ConversationKey(CHAT))) == 2, "the retry was not asked"
    api.push_message(CHAT, "And what colour is it?", user_id=USER)  # answered, told to send the photo again
    stored = await stored_answers(bot, ConversationKey(CHAT), 2)
    assert api.visible_text(CHAT)[-1].endswith(texts.IMAGE_GONE_NOTE), "told to send it again"
    api.push_message(CHAT, "Where is the weather nice?", user_id=USER)  # no longer about the photo: no note
    stored = await stored_answers(bot, ConversationKey(CHAT), 3)
    assert not api.visible_text(CHAT)[-1].endswith(texts.IMAGE_GONE_NOTE)

    api.push_message(CHAT, "What is it, then?", user_id=USER, reply_to=sent)
    stored = await stored_answers(bot, ConversationKey(CHAT), 4)
    assert stored[6].text == "What is it, then?" and len(stored[6].images) == 1


async def test_a_full_disk_gets_a_clear_reply_and_loses_nothing_stored(bot: RunningBot) -> None:
    api, history = bot.api, bot.services.history
    api.push_message(CHAT, photo=noise_jpeg(4), caption="What is it?", user_id=USER)
    await wait_answers(api, CHAT, 1)
    before = await stored_messages(history, ConversationKey(CHAT))
    await _full_disk(history, full=True)
    api.push_message(CHAT, photo=noise_jpeg(5), caption="And this one?", user_id=USER)
    await api.wait_for(lambda: texts.NOT_STORED in api.visible_text(CHAT), 30, "a clear reply")
    assert await stored_messages(history, ConversationKey(CHAT)) == before, "nothing lost, nothing pruned"
    api.push_message(GROUP, "@phi3_test_bot hello", user_id=USER)
    await api.wait_for(lambda: bool(api.visible_text(GROUP)), 30, "a reply in another chat, whatever it says")
    await _full_disk(history, full=False)
    api.push_message(CHAT, photo=noise_jpeg(5), caption="And this one?", user_id=USER)
    stored = await stored_answers(bot, ConversationKey(CHAT), 2)
    assert [(m.id, m.text) for m in stored[:2]] == [(m.id, m.text) for m in before] and stored[2].images[0].bounded


async def _full_disk(history: HistoryStore, *, full: bool) -> None:
    """As if the disk were full: the database may not grow past the pages it has (SQLite's max_page_count)."""
    async with history._reading():
        async with history._db.execute("PRAGMA page_count") as cursor:
            row = await cursor.fetchone()
        assert row is not None
        await history._db.execute(f"PRAGMA max_page_count = {row[0] if full else 1073741823}")


async def test_a_reply_to_the_same_clip_is_neither_downloaded_nor_read_again(bot: RunningBot) -> None:
    api = bot.api
    video = api.push_media(CHAT, "video", clip(16, 8), duration=2, caption="What happens?", user_id=USER)
    await wait_answers(api, CHAT, 1)
    downloads = len(api.calls_of("getFile"))
    api.push_message(CHAT, "And at the end?", user_id=USER, reply_to=video)
    await wait_answers(api, CHAT, 2)
    first, _, again, _ = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert [i.sha256 for i in again.images] == [i.sha256 for i in first.images] and len(first.images) == 4
    broken = api.push_message(
        GROUP, document=(b"\x00" * 5000, "clip.mp4", "video/mp4"), caption="@phi3_test_bot ?", user_id=USER
    )
    await api.wait_for(lambda: bool(api.visible_text(GROUP)), 30, "a refusal")
    api.push_message(GROUP, "@phi3_test_bot and now?", user_id=USER, reply_to=broken)
    await api.wait_for(lambda: len(api.visible_text(GROUP)) == 2, 30, "the same refusal")
    assert api.visible_text(GROUP)[0] == api.visible_text(GROUP)[1]
    assert len(api.calls_of("getFile")) == downloads + 1, "each file downloaded once"


async def test_a_photo_stored_as_sent_by_an_older_version_is_read_in_the_reader_and_replaced_by_its_copy(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = noise_jpeg(6, (4000, 3000))
    async with await HistoryStore.open(tmp_path / "history.sqlite3") as old:  # as an older version left it
        stored_as_sent = NewImage(original, hashlib.sha256(original).hexdigest(), "AgAD-old", "image/jpeg")
        _, answer = await old.start_exchange(ConversationKey(CHAT), "What is it?", images=[stored_as_sent])
        await old.update_assistant_message(answer, "A photo.", telegram_message_ids=[], status="complete")
    decoded: list[tuple[int, int]] = []
    real_get = PreparedImageCache.get

    def get(cache: PreparedImageCache, data: bytes, sha256: str) -> PreparedImage:
        decoded.append(size_of(data))
        return real_get(cache, data, sha256)

    monkeypatch.setattr(PreparedImageCache, "get", get)
    settings = bot_settings(api, int4_store[0].root, tmp_path, stream_drafts=False, warm_up_hours=0)
    async with running_bot(api, settings) as bot:
        api.push_message(CHAT, "And the colours?", user_id=USER)
        stored = await stored_answers(bot, ConversationKey(CHAT), 2)
    [image] = stored[0].images
    assert image.bounded and size_of(image.data) == (1344, 1008) and image.file_unique_id == "AgAD-old"
    assert decoded and all(max(size) <= 1344 for size in decoded), "the bot's process decoded only copies"
