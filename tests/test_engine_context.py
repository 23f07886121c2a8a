"""Long conversations on the tiny model: work read ahead of questions, steps of the context policy, images sent
once, and reading a conversation again that can be stopped.  Caches must never change an answer: each
prepared or cached answer is compared with the same prompt computed from nothing in a fresh model process."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace

import numpy as np

from engine.conversation import Turn
from engine.conversation_memory import ConversationMemory
from engine.engine import Chunk, Engine, Finished, Started
from engine.images import PreparedImage
from engine.pipeline_process import _HeldImages
from model_store.store import ModelEntry, ModelStore
from tests.test_engine import SETTINGS, collect, finished, interrupted, load, photo


async def cold(entry: ModelEntry, past: list[Turn], question: Turn) -> Finished:
    """The answer computed from nothing: a fresh model process that has seen nothing of the conversation."""
    engine = Engine(load(entry), SETTINGS)
    try:
        return finished(await collect(engine, "cold", past, question))
    finally:
        await engine.aclose()


async def test_a_photo_read_ahead_makes_its_question_start_like_a_follow_up(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    entry = int4_store[1]
    engine = Engine(load(entry), SETTINGS)
    sent_alone = Turn("user", "", (photo((250, 120, 10)),))
    prepared = await engine.prepare("a", [sent_alone])
    assert prepared.error is None and prepared.pieces == 1
    question = Turn("user", "What is written on it?")
    answer = finished(await collect(engine, "a", [sent_alone], question))
    await engine.aclose()
    reference = await cold(entry, [sent_alone], question)
    assert (reference.report.replays, answer.report.replays) == (1, 0), "the photo was read ahead, not when asked"
    assert answer.report.vision_seconds < reference.report.vision_seconds / 10, "and encoded then"
    assert (answer.report.input_tokens, answer.text) == (reference.report.input_tokens, reference.text)


async def test_steps_of_the_policy_are_prepared_and_the_turn_1_photo_is_seen_at_turn_30(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    entry = int4_store[1]
    engine = Engine(load(entry), SETTINGS)
    memory = ConversationMemory(budget=1100, system_prompt=SETTINGS.system_prompt)
    image = photo((20, 200, 90))
    steps = 0
    for turn in range(1, 31):
        question = Turn("user", f"Question number {turn}: what about the colour?", (image,) if turn == 1 else ())
        past = memory.view()
        answer = finished(await collect(engine, "a", past, question))
        assert answer.status == "complete"
        if turn > 1:
            assert answer.report.replays == 0, f"turn {turn}: the conversation was prepared, not read again"
        steps += memory.record(question, answer)
        assert (await engine.prepare("a", memory.view())).error is None
    assert steps >= 2
    view = memory.view()
    assert view[0].images == (image,), "the turn-1 photo is still in view, first, after its turn was dropped"
    assert len(view) < 58, "older text turns were dropped"
    last = Turn("user", "And what was in the photo?")
    answer = finished(await collect(engine, "a", view, last))
    await engine.aclose()
    assert answer.report.replays == 0, "read ahead"
    assert answer.report.input_tokens > 757, "the photo's 757 positions are in the prompt"
    reference = await cold(entry, view, last)
    assert (answer.report.input_tokens, answer.text) == (reference.report.input_tokens, reference.text)


async def test_a_step_read_ahead_changes_no_answer_and_its_question_reads_no_photo_again(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    entry = int4_store[1]
    image = photo((200, 60, 160))

    async def converse(read_ahead: bool) -> tuple[list[str], list[int], list[int]]:
        """The answers, and the photo messages read again by each question that followed a step, and by others."""
        engine = Engine(load(entry), SETTINGS)
        memory = ConversationMemory(budget=2400, system_prompt=SETTINGS.system_prompt)
        texts, after_steps, others = [], [], []
        stepped = False
        for turn in range(1, 25):
            words = f"Question {turn}: " + "and what about the shapes, the colours, the light in it? " * 6
            question = Turn("user", words, (image,) if turn == 1 else ())
            answer = finished(await collect(engine, "a", memory.view(), question))
            texts.append(answer.text)
            (after_steps if stepped else others).append(answer.report.replays)
            stepped = memory.record(question, answer)
            next_view = memory.next_view()
            if read_ahead and next_view is not None:
                assert (await engine.prepare("a", next_view, ahead=True)).error is None
        await engine.aclose()
        return texts, after_steps, others

    plain, plain_after_steps, plain_others = await converse(read_ahead=False)
    texts, after_steps, others = await converse(read_ahead=True)
    assert texts == plain, "the same answers, steps included, whether the step's view was read ahead or not"
    assert len(after_steps) >= 3 and set(plain_after_steps) == {1}, "without, a step's question read the photo again"
    assert set(after_steps) == {0}, "read ahead, the step's question found its view read, photo and all"
    assert set(others) == set(plain_others) == {0}


async def test_another_chats_question_waits_only_for_the_piece_being_read(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    engine = Engine(load(int4_store[1]), SETTINGS)
    long_past = []
    for number in range(10):  # about 12,000 tokens: more than ten pieces of reading
        long_past += [
            Turn("user", f"Tell me about harbour number {number}. " * 20),
            Turn("assistant", " ".join(f"Ships and cranes and gulls, part {number}, item {i}." for i in range(40))),
        ]
    preparing = asyncio.create_task(engine.prepare("a", long_past))
    await asyncio.sleep(0.3)
    assert not preparing.done(), "the preparation is long enough to be under way"
    other = finished(await collect(engine, "b", [], Turn("user", "Hello, other chat here.")))
    assert other.status == "complete"
    assert not preparing.done(), "the other chat was answered between two pieces, not after the preparation"
    prepared = await preparing
    assert prepared.error is None and prepared.pieces > 10
    follow_up = finished(await collect(engine, "a", long_past, Turn("user", "Which harbour was first?")))
    assert follow_up.report.replays == 0 and follow_up.status == "complete"
    await engine.aclose()


def album_past(count: int) -> list[Turn]:
    past = []
    for number in range(count):
        past += [Turn("user", f"Photo {number}?", (photo((number * 40, 90, 200)),)), Turn("assistant", "A photo.")]
    return past


async def test_reading_a_conversation_again_stops_between_photos_when_cancelled(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    engine = Engine(load(int4_store[1]), SETTINGS)
    past = album_past(6)
    events = []
    async for event in engine.ask("a", past, Turn("user", "Compare them all.")):
        events.append(event)
        if isinstance(event, Started):
            await asyncio.sleep(0.05)
            engine.cancel("a")
    done = finished(events)
    assert done.status == "cancelled" and done.report.generated_tokens == 0
    assert not any(isinstance(event, Chunk) for event in events)
    assert done.report.replays < 6, "it stopped before reading every photo again"
    assert finished(await collect(engine, "a", [], Turn("user", "Hi"))).status == "complete", "the slot is free"
    await engine.aclose()


async def test_reading_a_conversation_again_stops_at_the_time_limit(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    engine = Engine(load(int4_store[1]), replace(SETTINGS, timeout_seconds=0.05))
    done = finished(await collect(engine, "a", album_past(6), Turn("user", "Compare them all.")))
    assert done.status == "timeout" and done.report.generated_tokens == 0 and done.report.replays < 6
    await engine.aclose()


def test_images_go_to_the_model_process_once_and_what_it_drops_is_never_in_use() -> None:
    def image(sha: str, size: int) -> PreparedImage:
        return replace(photo((1, 2, 3), (8, 8)), sha256=sha, pixels=np.zeros(size, dtype=np.uint8))

    held = _HeldImages(capacity=300)
    a, b, c = image("a", 100), image("b", 100), image("c", 150)
    new, forget = held.send(1, [a])
    assert list(new) == ["a"] and forget == ()
    held.done(1)
    new, forget = held.send(2, [a, b])
    assert list(new) == ["b"] and forget == (), "a follow-up carries only the new image"
    new, forget = held.send(3, [c])
    assert list(new) == ["c"] and forget == (), "a and b are in flight for request 2: nothing may go"
    held.done(2)
    new, forget = held.send(4, [c])
    assert new == {} and forget == ("a",), "once free, the least recently used goes first"


async def test_a_preparation_overtaken_by_a_question_reads_nothing_again(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    engine = Engine(load(int4_store[1]), SETTINGS)
    question = Turn("user", "What is in it?", (photo((90, 90, 250)),))
    answer = finished(await collect(engine, "a", [], question))
    stale = await engine.prepare("a", [])  # sent before the question, arriving after it
    assert stale.error is None and stale.pieces == 0
    follow_up = finished(await collect(engine, "a", [question, Turn("assistant", answer.text)], Turn("user", "More?")))
    assert follow_up.report.replays == 0, "the conversation was not read again from its start"
    await engine.aclose()


async def test_a_hung_model_process_is_replaced_when_the_time_limit_comes(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    settings = replace(SETTINGS, max_new_tokens=100_000, timeout_seconds=2.0)
    engine = Engine(load(int4_store[1]), settings, stop_grace_seconds=1.0)
    pid = engine.model.pipeline.pid
    assert pid is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    events, _ = await interrupted(engine, "a", Turn("user", "Go on forever."), lambda: os.kill(pid, signal.SIGSTOP))
    done = finished(events)
    assert done.status == "timeout" and done.text, "the answer ends as timed out, with what was said before"
    assert loop.time() - started < 2.0 + 1.0 + 5.0, "within the time limit and the grace, not never"
    engine.settings = SETTINGS
    again = finished(await collect(engine, "b", [], Turn("user", "Hi")))
    assert again.status == "complete", "a fresh process took over"
    assert engine.model.pipeline.pid != pid
    await engine.aclose()
