"""A bot at its start: questions taken while the model loads (their status shown at once), and estimates from the
first question on, from speeds kept across restarts or measured once on a new machine."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from bot import texts
from bot.history import ConversationKey
from devkit.bot_api_server import FakeBotApi
from devkit.harness import USER, RunningBot, bot_settings, running_bot, stored_answers
from engine.conversation import Turn
from engine.engine import Engine, Finished, Started
from engine.estimates import Speed
from engine.pipeline_process import start_pipeline
from engine.speed_book import KEPT, SpeedBook, speed_key
from model_store.errors import ModelStoreError
from model_store.loader import pipeline_spec
from model_store.store import ModelEntry, ModelStore
from tests.test_engine import SETTINGS, collect, finished, load, photo


@contextmanager
def held(pid: int | None) -> Iterator[None]:
    """The model's process stopped where it is (loading, here) until the block ends."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@asynccontextmanager
async def loading_bot(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> AsyncIterator[tuple[RunningBot, Engine]]:
    """The bot as it starts: taking updates while its model still loads."""
    async with running_bot(api, bot_settings(api, int4_store[0].root, tmp_path), loaded=False) as bot:
        engine = bot.services.engine
        assert isinstance(engine, Engine) and engine.loading, "the bot takes updates before its model has loaded"
        yield bot, engine


@pytest.fixture
def book(tmp_path: Path) -> SpeedBook:
    return SpeedBook(tmp_path / "speeds.json")


async def measured_book(entry: ModelEntry, tmp_path: Path) -> SpeedBook:
    """A book in which a model process of ``entry`` has measured its speed (and its load) on this machine."""
    book = SpeedBook(tmp_path / "speeds.json")
    teacher = Engine(load(entry), SETTINGS, speed_book=book)
    try:
        assert await teacher.calibrate()
    finally:
        await teacher.aclose()
    return book


async def test_a_question_asked_while_the_model_loads_is_shown_at_once_may_be_stopped_and_is_answered_once_loaded(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    async with loading_bot(api, int4_store, tmp_path) as (bot, engine):
        with held(engine.model.pipeline.pid):
            asked = time.monotonic()
            api.push_message(USER, "Are you there?", user_id=USER)
            await api.wait_for(lambda: bool(api.draft_texts(USER)), 10, "a status")
            shown = time.monotonic() - asked
            heartbeat = json.loads(bot.settings.heartbeat_path.read_text())
            assert engine.loading and api.messages(USER) == [], "shown while the model still loads"
            assert not heartbeat["model_loaded"], "the health check tells a loading model from a loaded one"
            api.push_message(USER, "/stop", user_id=USER)
            stored = await stored_answers(bot, ConversationKey(USER), 1, timeout=10)
            assert engine.loading and [m.status for m in stored] == ["complete", "cancelled"], "ended, unasked"
        api.push_message(USER, "And now?", user_id=USER)
        stored = await stored_answers(bot, ConversationKey(USER), 2, timeout=60)
    assert [m.status for m in stored][2:] == ["complete", "complete"], "the next question is answered once loaded"
    assert shown < 5, shown  # generous for a busy machine: the status comes with the first poll, not after the load


async def test_a_model_that_does_not_load_is_not_loaded_again_for_each_question(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    engine = Engine(start_pipeline(pipeline_spec(int4_store[1], kv_cache_gb=1)), SETTINGS)
    pid = engine.model.pipeline.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer ends a load
    try:
        with pytest.raises(ModelStoreError):
            await engine.loaded()
        for _ in range(2):
            answer = finished(await collect(engine, "a", [], Turn("user", "Hello?")))
            assert answer.status == "failed"
        assert engine.model.pipeline.pid == pid, "no new process was started for them"
    finally:
        await engine.aclose()


async def test_a_bot_whose_model_does_not_load_says_it_has_none(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    async with loading_bot(api, int4_store, tmp_path) as (bot, engine):
        assert engine.model.pipeline.pid is not None
        os.kill(engine.model.pipeline.pid, signal.SIGKILL)
        await api.wait_for(lambda: bot.services.engine is None, 30, "the bot to let the model go")
        api.push_message(USER, "Hello?", user_id=USER)
        await api.wait_for(lambda: texts.NO_MODEL in api.visible_text(USER), 10, "the no-model reply")


async def test_speeds_measured_by_one_model_process_give_the_next_estimates_from_its_first_question(
    int4_store: tuple[ModelStore, ModelEntry], book: SpeedBook
) -> None:
    entry = int4_store[1]
    first = Engine(load(entry), SETTINGS, speed_book=book)
    for shade in range(3):  # the first photo of a process teaches nothing; then photos and a follow-up
        question = Turn("user", "What is this?", (photo((40, 80 * shade, 200)),))
        finished(await collect(first, f"chat {shade}", [], question))
    await first.aclose()
    assert json.loads(book.path.read_text()), "the speeds were written down"

    second = Engine(load(entry), SETTINGS, speed_book=book)
    try:
        events = await collect(second, "new", [], Turn("user", "And this?", (photo((250, 250, 0)),)))
    finally:
        await second.aclose()
    started = next(event for event in events if isinstance(event, Started))
    assert started.seconds is not None, "a new process shows an estimate for its first photo"


async def test_an_estimate_counts_the_conversation_the_model_process_has_not_read(
    int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    entry = int4_store[1]
    book = await measured_book(entry, tmp_path)
    engine = Engine(load(entry), SETTINGS, speed_book=book)  # as after a restart: it has read nothing
    past = [Turn("user", "What is this?", (photo((10, 200, 30)),)), Turn("assistant", "A green square.")]
    try:
        cold = await collect(engine, "a", past, Turn("user", "And its size?"))
        answered = [*past, Turn("user", "And its size?"), Turn("assistant", finished(cold).text)]
        warm = await collect(engine, "a", answered, Turn("user", "And the colour?"))
    finally:
        await engine.aclose()
    estimates = [next(e for e in events if isinstance(e, Started)).seconds for events in (cold, warm)]
    assert None not in estimates and estimates[0] > 3 * estimates[1], estimates
    assert finished(cold).report.replays == 1 and finished(warm).report.replays == 0, "as the estimates said"


async def test_while_the_model_loads_the_estimate_counts_the_rest_of_the_load(
    int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    entry = int4_store[1]
    book = await measured_book(entry, tmp_path)
    key = speed_key(entry.source, entry.precision, "CPU", pipeline_spec(entry, kv_cache_gb=1).properties)
    speed, load_seconds = book.read(key)
    book.write(key, speed.saved(), 600.0)  # a load that took ten minutes last time
    engine = Engine(start_pipeline(pipeline_spec(entry, kv_cache_gb=1)), SETTINGS, speed_book=book)
    try:
        with held(engine.model.pipeline.pid):
            events = engine.ask("a", [], Turn("user", "Hello?"))
            started = await anext(events)
        rest = [event async for event in events]
    finally:
        await engine.aclose()
    assert load_seconds is not None and isinstance(started, Started) and started.seconds is not None
    assert 590 < started.seconds < 610, "most of the ten minutes were still to come"
    assert isinstance(rest[-1], Finished) and rest[-1].status == "complete"


async def test_a_model_new_to_the_machine_measures_its_speed_once(
    int4_store: tuple[ModelStore, ModelEntry], book: SpeedBook
) -> None:
    engine = Engine(load(int4_store[1]), SETTINGS, speed_book=book)
    try:
        assert engine.speed.estimate(800, 757, SETTINGS.max_new_tokens) is None
        assert await engine.calibrate(), "nothing was known: measured"
        assert engine.speed.estimate(800, 757, SETTINGS.max_new_tokens) is not None
        assert engine.speed.estimate(30, 0, SETTINGS.max_new_tokens) is not None, "and a text follow-up's"
        assert engine.speed.answer_tokens is None, "a made-up answer says nothing of how long answers are"
        assert not await engine.calibrate(), "known now: nothing more to measure"
        assert engine.stats.answered == 3
    finally:
        await engine.aclose()
    again = Engine(load(int4_store[1]), SETTINGS, speed_book=book)
    try:
        assert not await again.calibrate(), "the next process of the same model on this machine reads the book"
    finally:
        await again.aclose()


def test_the_book_keeps_each_model_on_each_machine_apart_and_survives_damage(book: SpeedBook) -> None:
    speed = Speed()
    speed.decode_tokens_per_second = 7.5
    int4 = speed_key("microsoft/Phi-3.5-vision-instruct", "int4", "CPU", {})
    int8 = speed_key("microsoft/Phi-3.5-vision-instruct", "int8", "CPU", {})
    threads = speed_key("microsoft/Phi-3.5-vision-instruct", "int4", "CPU", {"INFERENCE_NUM_THREADS": 1})
    assert len({int4, int8, threads}) == 3
    book.write(int4, speed.saved(), 4.2)
    read, load_seconds = book.read(int4)
    assert (read.decode_tokens_per_second, load_seconds) == (7.5, 4.2)
    assert book.read(int8)[0].decode_tokens_per_second is None, "another precision starts from nothing"
    for number in range(KEPT + 5):
        book.write(f"model {number}", speed.saved(), float(number))
    kept = json.loads(book.path.read_text())
    assert len(kept) == KEPT and "model 0" not in kept and int4 not in kept, "the oldest go"
    assert book.read(f"model {KEPT + 4}")[1] == KEPT + 4, "the newest stay"
    book.path.write_text("{not json")
    assert book.read(int4)[0].decode_tokens_per_second is None, "a damaged book is an empty one"
    book.path.write_text(json.dumps({int4: {"speed": {**speed.saved(), "batch_share": -1.0}}}))
    assert book.read(int4)[0].decode_tokens_per_second is None, "and so is a damaged record"
