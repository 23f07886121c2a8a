"""The engine on the tiny synthetic model: streaming into asyncio, history, fairness, cancellation, hot swap."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.media.decoding import prepare_image
from engine.conversation import Turn
from engine.engine import Chunk, Engine, Event, Finished, Started, Waiting
from engine.fair_queue import AlreadyQueued
from engine.generation import RETRY_TEMPERATURE, GenerationSettings
from engine.images import PreparedImage
from engine.pipeline_process import LoadedModel, load_pipeline
from model_store.loader import pipeline_spec
from model_store.store import ModelEntry, ModelStore
from tests.conftest import Converted

SETTINGS = GenerationSettings(max_new_tokens=12, system_prompt="You are a test assistant.", ignore_eos=True)


def photo(colour: tuple[int, int, int], size: tuple[int, int] = (640, 480)) -> PreparedImage:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, colour)
    image.paste((255 - colour[0], 255 - colour[1], 255 - colour[2]), (50, 50, 200, 200))
    image.save(buffer, format="PNG")
    return prepare_image(buffer.getvalue())


def load(entry: ModelEntry) -> LoadedModel:
    return load_pipeline(pipeline_spec(entry, kv_cache_gb=1))


@pytest.fixture
def engine(int4_store: tuple[ModelStore, ModelEntry]) -> Engine:
    return Engine(load(int4_store[1]), SETTINGS)


async def collect(engine: Engine, key: object, past: list[Turn], question: Turn) -> list[Event]:
    return [event async for event in engine.ask(key, past, question)]


async def interrupted(
    engine: Engine, key: object, question: Turn, action: Callable[[], object]
) -> tuple[list[Event], object]:
    """The answer to ``question``, with ``action`` done once, when the third chunk has arrived; and what it returned."""
    events: list[Event] = []
    outcome: object = None
    async for event in engine.ask(key, [], question):
        events.append(event)
        if isinstance(event, Chunk) and sum(isinstance(e, Chunk) for e in events) == 3:
            outcome = action()
    return events, outcome


def finished(events: list[Event]) -> Finished:
    last = events[-1]
    assert isinstance(last, Finished), events
    return last


async def test_streams_chunks_in_order_then_finishes(engine: Engine) -> None:
    events = await collect(engine, 1, [], Turn("user", "What is in this image?", (photo((200, 30, 30)),)))
    assert isinstance(events[0], Started)
    chunks = [event.text for event in events if isinstance(event, Chunk)]
    done = finished(events)
    assert done.status == "complete"
    assert len(chunks) >= 2
    assert done.text.startswith("".join(chunks)[: len(done.text) // 2])
    assert done.report.generated_tokens == 12 and done.report.input_tokens > 700
    assert done.ttft_seconds is not None and done.ttft_seconds <= done.seconds
    await engine.aclose()


async def test_event_loop_keeps_serving_during_generation(engine: Engine) -> None:
    engine.settings = replace(SETTINGS, max_new_tokens=200)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await collect(engine, 1, [], Turn("user", "Describe it.", (photo((10, 200, 10)),)))
    elapsed = loop.time() - started
    stop.set()
    await task
    assert finished(events).status == "complete"
    assert elapsed > 0.2
    assert ticks >= 0.5 * elapsed / 0.005 / 2, f"only {ticks} ticks in {elapsed:.2f} s: the loop was blocked"
    await engine.aclose()


async def test_follow_up_uses_the_photo_and_survives_a_restart(int4_store: tuple[ModelStore, ModelEntry]) -> None:
    image = photo((30, 30, 220))
    first_question = Turn("user", "What is in this image?", (image,))
    engine = Engine(load(int4_store[1]), SETTINGS)
    first = finished(await collect(engine, "a", [], first_question))
    past = [first_question, Turn("assistant", first.text)]
    follow_up = Turn("user", "And what colour is the square?")
    second = finished(await collect(engine, "a", past, follow_up))
    assert second.status == "complete"
    grown = second.report.input_tokens - first.report.input_tokens
    assert grown > 5, "the follow-up carries the photo and the first answer"
    await engine.aclose()

    restarted = Engine(load(int4_store[1]), SETTINGS)  # nothing cached: rebuilt from history
    again = finished(await collect(restarted, "a", past, follow_up))
    assert again.report.input_tokens == second.report.input_tokens, "the rebuilt prompt is the same prompt"
    assert again.text == second.text, "the KV cache is only a cache: the greedy answer does not change"
    assert again.report.replays == 1, "the photo question was sent again, once"
    await restarted.aclose()


async def test_interleaved_chats_keep_their_own_history(engine: Engine) -> None:
    red, green = photo((220, 20, 20)), photo((20, 220, 20))
    a1 = Turn("user", "What is this?", (red,))
    b1 = Turn("user", "Describe this photo.", (green,))
    a_answer = finished(await collect(engine, "a", [], a1))
    b_answer = finished(await collect(engine, "b", [], b1))
    a2 = Turn("user", "Tell me more.")
    follow = finished(await collect(engine, "a", [a1, Turn("assistant", a_answer.text)], a2))
    assert follow.status == "complete"
    assert follow.report.replays == 0, "chat A's state survived chat B"
    assert b_answer.report.input_tokens < follow.report.input_tokens
    await engine.aclose()


async def test_second_chat_waits_with_a_position_and_same_chat_is_refused(engine: Engine) -> None:
    engine.settings = replace(SETTINGS, max_new_tokens=60)
    first = asyncio.create_task(collect(engine, "a", [], Turn("user", "Describe.", (photo((1, 2, 3)),))))
    await asyncio.sleep(0.05)
    with pytest.raises(AlreadyQueued):
        await collect(engine, "a", [], Turn("user", "again"))
    second_events = await collect(engine, "b", [], Turn("user", "Hello"))
    assert any(isinstance(event, Waiting) and event.position == 1 for event in second_events)
    assert finished(await first).status == "complete"
    assert finished(second_events).status == "complete"
    assert engine.queue.served == 2 and len(engine.queue) == 0
    await engine.aclose()


async def test_a_caller_gone_while_waiting_gives_its_place_back(engine: Engine) -> None:
    engine.settings = replace(SETTINGS, max_new_tokens=60)
    first = asyncio.create_task(collect(engine, "a", [], Turn("user", "Describe.", (photo((1, 2, 3)),))))
    await asyncio.sleep(0.05)
    waiting = engine.ask("b", [], Turn("user", "Hello"))
    assert isinstance(await anext(waiting), Waiting) and engine.queue.position("b") is not None
    await waiting.aclose()
    assert engine.queue.position("b") is None and len(engine.queue) == 1, "its place is free, not held for nobody"
    assert finished(await first).status == "complete"
    assert finished(await collect(engine, "b", [], Turn("user", "Hello again"))).status == "complete"
    assert engine.queue.served == 2 and len(engine.queue) == 0
    await engine.aclose()


async def test_estimates_follow_a_first_measured_answer_and_cover_the_answers_ahead(engine: Engine) -> None:
    engine.settings = replace(SETTINGS, max_new_tokens=60)
    for key, colour in (("a", (1, 2, 3)), ("w", (3, 2, 1))):  # the warm-up, then the first measurement
        first = await collect(engine, key, [], Turn("user", "Describe.", (photo(colour),)))
        assert Started(None, 1) in first, "nothing numeric before anything was measured"
    assert engine.speed.vision_seconds_per_image_token is not None and engine.speed.decode_tokens_per_second
    running = asyncio.create_task(collect(engine, "b", [], Turn("user", "And this?", (photo((4, 5, 6)),))))
    await asyncio.sleep(0.05)
    waiting = await collect(engine, "c", [], Turn("user", "What is it?", (photo((7, 8, 9)),)))
    [estimated] = [event for event in await running if isinstance(event, Started)]
    assert estimated.images == 1 and estimated.seconds is not None and estimated.seconds > 0
    [place] = [event for event in waiting if isinstance(event, Waiting)]
    assert place.position == 1 and place.seconds is not None and place.seconds > 0
    await engine.aclose()


async def test_cancel_stops_within_a_token_and_frees_the_slot(engine: Engine) -> None:
    engine.settings = replace(SETTINGS, max_new_tokens=3000)
    events, cancelled = await interrupted(engine, "a", Turn("user", "Write a long story."), lambda: engine.cancel("a"))
    assert cancelled is True
    done = finished(events)
    assert done.status == "cancelled"
    assert 3 <= done.report.generated_tokens < 50
    assert done.text, "the partial answer is kept"
    engine.settings = SETTINGS
    assert finished(await collect(engine, "a", [], Turn("user", "Hi"))).status == "complete"
    await engine.aclose()


async def test_cancelling_a_waiting_question_frees_its_place_at_once(engine: Engine) -> None:
    engine.settings = replace(SETTINGS, max_new_tokens=80)
    first = asyncio.create_task(collect(engine, "a", [], Turn("user", "Describe.", (photo((3, 3, 3)),))))
    await asyncio.sleep(0.05)
    waiting: list[Event] = []

    async def second() -> None:
        async for event in engine.ask("b", [], Turn("user", "Hi")):
            waiting.append(event)
            if isinstance(event, Waiting):
                assert engine.cancel("b") is True

    await asyncio.wait_for(second(), 5)
    assert finished(waiting).status == "cancelled"
    assert engine.queue.position("b") is None
    assert finished(await first).status == "complete"
    await engine.aclose()


async def test_time_limit_ends_an_answer_cleanly(engine: Engine) -> None:
    engine.settings = replace(SETTINGS, max_new_tokens=5000, timeout_seconds=0.3)
    done = finished(await collect(engine, "a", [], Turn("user", "Go on forever.")))
    assert done.status == "timeout"
    assert 0 < done.report.generated_tokens < 5000
    await engine.aclose()


async def test_hot_swap_switches_at_a_request_boundary(
    int4_store: tuple[ModelStore, ModelEntry], int8_conversion: Converted
) -> None:
    engine = Engine(load(int4_store[1]), replace(SETTINGS, max_new_tokens=40))
    int8 = int8_conversion.entry
    running = asyncio.create_task(collect(engine, "a", [], Turn("user", "Describe.", (photo((5, 5, 5)),))))
    await asyncio.sleep(0.05)
    swapping = asyncio.create_task(engine.swap(load(int8)))
    first = finished(await running)
    previous = await swapping
    assert first.status == "complete", "the running answer finished on the old model"
    assert previous.entry.precision == "int4" and engine.model.entry.precision == "int8"
    assert engine.speed.decode_tokens_per_second is None, "the new model's speed is measured anew"
    assert finished(await collect(engine, "a", [], Turn("user", "Hello"))).status == "complete"
    await engine.aclose()


async def test_a_failing_generation_is_reported_and_the_queue_continues(engine: Engine) -> None:
    image = photo((9, 9, 9))
    floats = replace(image, pixels=image.pixels.astype(np.float32))  # OpenVINO refuses them deep inside
    done = finished(await collect(engine, "a", [], Turn("user", "Hi", (floats,))))
    assert done.status == "failed" and done.error
    assert len(engine.queue) == 0
    assert finished(await collect(engine, "b", [], Turn("user", "Hi"))).status == "complete"
    assert engine.stats.failed == 1 and engine.stats.answered == 1
    await engine.aclose()


async def test_a_crashed_model_process_fails_its_answer_and_is_restarted(engine: Engine) -> None:
    engine.settings = replace(SETTINGS, max_new_tokens=3000)
    pid = engine.model.pipeline.pid
    assert pid is not None
    events, _ = await interrupted(
        engine, "a", Turn("user", "Write a long story."), lambda: os.kill(pid, signal.SIGKILL)
    )
    done = finished(events)
    assert done.status == "failed" and "exit code -9" in (done.error or "")
    assert done.text, "what was streamed before the crash is kept"
    engine.settings = SETTINGS
    again = finished(await collect(engine, "b", [], Turn("user", "Hi")))
    assert again.status == "complete", "a fresh process took over"
    await engine.aclose()


async def test_a_question_whose_model_process_died_before_its_first_word_is_asked_of_a_fresh_one(
    engine: Engine,
) -> None:
    pid = engine.model.pipeline.pid
    assert pid is not None
    events = []
    async for event in engine.ask("a", [], Turn("user", "What is in this image?", (photo((20, 90, 200)),))):
        events.append(event)
        if isinstance(event, Started):
            os.kill(pid, signal.SIGKILL)  # before the job reaches it, or while it reads the photo
    done = finished(events)
    assert done.status == "complete" and done.text, done
    assert engine.model.pipeline.pid != pid, "a fresh process answered"
    assert engine.stats.failed == 0
    await engine.aclose()


async def timed(engine: Engine, key: object, past: list[Turn], question: Turn) -> list[tuple[float, Event]]:
    loop = asyncio.get_running_loop()
    return [(loop.time(), event) async for event in engine.ask(key, past, question)]


async def test_chats_that_wait_together_are_answered_together_and_follow_ups_still_work(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    engine = Engine(load(int4_store[1]), SETTINGS, batch_max=3)
    first = Turn("user", "Describe this.", (photo((40, 40, 40)),))
    b_question = Turn("user", "What is in this image?", (photo((200, 10, 10)),))
    c_question = Turn("user", "Say something nice.")
    a, b, c = await asyncio.gather(
        timed(engine, "a", [], first), timed(engine, "b", [], b_question), timed(engine, "c", [], c_question)
    )
    assert any(isinstance(event, Waiting) for _, event in b + c), "b and c waited while a ran alone"
    b_chunks = [at for at, event in b if isinstance(event, Chunk)]
    c_chunks = [at for at, event in c if isinstance(event, Chunk)]
    assert min(c_chunks) < max(b_chunks) and min(b_chunks) < max(c_chunks), "b and c were generated together"
    assert a[-1][0] <= min(b_chunks + c_chunks), "the batch started after the lone answer"
    b_done, c_done = finished([event for _, event in b]), finished([event for _, event in c])
    assert b_done.status == c_done.status == "complete"
    assert b_done.report.generated_tokens == c_done.report.generated_tokens == 12

    b_alone = finished(await collect(engine, "b-alone", [], b_question))
    c_alone = finished(await collect(engine, "c-alone", [], c_question))
    batched = [b_done.report.input_tokens, c_done.report.input_tokens]
    alone = [b_alone.report.input_tokens, c_alone.report.input_tokens]
    assert batched == alone, "a batched request sees the prompt a lone one sees"
    assert (b_done.text, c_done.text) == (b_alone.text, c_alone.text)

    follow_up = Turn("user", "And the colour?")
    b_past = [b_question, Turn("assistant", b_done.text)]
    after_batch = finished(await collect(engine, "b", b_past, follow_up))
    assert after_batch.report.replays == 1, "the photo answered in the batch was sent again to GenAI's chat state"
    after_alone = finished(await collect(engine, "b-alone", [b_question, Turn("assistant", b_alone.text)], follow_up))
    assert after_alone.report.replays == 0
    assert after_batch.report.input_tokens == after_alone.report.input_tokens and after_batch.text == after_alone.text
    await engine.aclose()


async def test_cancelling_one_answer_of_a_batch_leaves_the_others_running(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    engine = Engine(load(int4_store[1]), replace(SETTINGS, max_new_tokens=3000), batch_max=3)
    a_events, (b_events, b_cancelled), c_events = await asyncio.gather(
        collect(engine, "a", [], Turn("user", "Hello.")),
        interrupted(engine, "b", Turn("user", "Write a long story."), lambda: engine.cancel("b")),
        collect(engine, "c", [], Turn("user", "Tell me about the sea.")),
    )
    assert b_cancelled is True
    b_done, c_done = finished(b_events), finished(c_events)
    # Stopped, not finished: a token takes about a millisecond here, and a loaded CI machine has needed a few hundred
    # tokens' time to act on the cancel, so the bound is half the answer b would have written rather than a latency.
    assert b_done.status == "cancelled" and 3 <= b_done.report.generated_tokens < 1500 and b_done.text
    assert c_done.status == "complete" and c_done.report.generated_tokens == 3000
    assert finished(a_events).status == "complete"
    assert len(engine.queue) == 0
    await engine.aclose()


async def test_an_album_is_one_question_about_all_photos(engine: Engine) -> None:
    one = finished(await collect(engine, "a", [], Turn("user", "Compare.", (photo((9, 9, 9)),))))
    two = finished(await collect(engine, "b", [], Turn("user", "Compare.", (photo((9, 9, 9)), photo((99, 9, 9))))))
    assert two.report.input_tokens > one.report.input_tokens + 500
    await engine.aclose()


async def test_the_engine_hands_genai_a_square_crop_grid(
    int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    loaded = load_pipeline(pipeline_spec(int4_store[1], views_dir=tmp_path / "views", num_crops=16, kv_cache_gb=1))
    assert loaded.num_crops == 16
    engine = Engine(loaded, SETTINGS)
    tokens = []
    for index, size in enumerate([(640, 480), (640, 640)]):
        question = Turn(role="user", text="What is it?", images=(photo((10, 120, 200), size),))
        tokens.append(finished(await collect(engine, f"chat {index}", [], question)).report.input_tokens)
    await engine.aclose()
    assert tokens[0] == tokens[1]  # the 4:3 photo went in as the square it was padded to


def test_another_take_samples_from_its_own_seed_and_keeps_a_configured_temperature() -> None:
    greedy = GenerationSettings().another_take(1234).to_genai()
    assert greedy.do_sample and greedy.temperature == RETRY_TEMPERATURE and greedy.rng_seed == 1234
    warm = GenerationSettings(temperature=0.9, top_p=0.8).another_take(7).to_genai()
    assert warm.do_sample and warm.temperature == pytest.approx(0.9) and warm.top_p == pytest.approx(0.8)
    assert warm.rng_seed == 7
