"""A model process that stops reading its pipe (stopped with SIGSTOP here; a hung one, or one holding its GIL for
seconds in a batched GenAI call, looks the same from the bot's side) while a photo's pixels, several MB, are
sent to it: the event loop goes on, a stop still ends the answer with its text once the watchdog has replaced
the process, the next question gets a fresh one, and shutting down takes seconds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import pytest

from bot import texts
from bot.history import ConversationKey
from devkit.bot_api_server import FakeBotApi
from devkit.harness import (
    ADMIN,
    USER,
    answer_drafts,
    bot_settings,
    photo_bytes,
    running_bot,
    stored_answers,
    stored_messages,
)
from devkit.harness import finished as looks_finished
from devkit.processes import bot_environment, bot_process
from engine.conversation import Turn
from engine.engine import SHUTDOWN_GRACE_SECONDS, STOP_GRACE_SECONDS, Engine, Finished
from engine.pipeline_process import CLOSE_GRACE_SECONDS, PipelineProcess
from model_store.store import ModelEntry, ModelStore
from tests.test_bot_process import read_history
from tests.test_engine import SETTINGS, collect, finished, load, photo

LARGE = (2600, 1950)  # 15 MB of pixels: the pipe holds a few hundred KB


@dataclass
class LoopWatch:
    """The longest time the event loop went without running a 10 ms ticker."""

    longest: float = 0.0


@contextlib.asynccontextmanager
async def loop_watch() -> AsyncIterator[LoopWatch]:
    watch = LoopWatch()
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            watch.longest = max(watch.longest, now - last - 0.01)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        yield watch
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


@contextlib.contextmanager
def stopped(pipeline: PipelineProcess) -> Iterator[None]:
    """The model's process stopped for the block; on the way out it is killed (if the test's engine has not
    done so), so no test leaves a stopped process behind."""
    assert pipeline.pid is not None
    os.kill(pipeline.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        pipeline.kill()  # a no-op for a process already ended and reaped


def alive(pid: int) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


async def test_a_stopped_model_process_never_blocks_the_event_loop_and_a_stop_still_ends_the_answer(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    grace = 2.0  # the watchdog's grace, shortened for speed: the mechanism is the one the bot's 15 s use
    engine = Engine(load(int4_store[1]), SETTINGS, stop_grace_seconds=grace)
    pipeline = engine.model.pipeline
    large = photo((120, 60, 200), LARGE)
    assert large.pixels.nbytes > 10 * 1024 * 1024
    loop = asyncio.get_running_loop()
    with stopped(pipeline):
        async with loop_watch() as watch:
            answer = asyncio.create_task(collect(engine, "a", [], Turn("user", "What is in it?", (large,))))
            await asyncio.sleep(0.5)  # the job is on its way: the pipe is full, the process reads nothing
            engine.forget("b")  # another conversation's reset also goes behind it
            assert engine.cancel("a") is True
            cancelled_at = loop.time()
            events = await asyncio.wait_for(answer, grace + 5)
            ended_in = loop.time() - cancelled_at
    assert watch.longest < 0.2, f"the event loop stalled for {watch.longest:.2f} s"
    done = finished(events)
    assert done.status == "cancelled" and done.error is None, done
    assert ended_in < grace + 1.5, f"the stopped answer ended {ended_in:.1f} s after the stop"
    assert not pipeline.alive and not alive(pipeline.pid or 0), "the watchdog ended the stopped process"
    again = finished(await collect(engine, "a", [], Turn("user", "Hi")))
    assert again.status == "complete" and engine.model.pipeline.pid != pipeline.pid, "a fresh process answered"
    await engine.aclose()


async def test_a_stop_that_comes_after_the_answer_ended_leaves_its_process_alone(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    """The caller still writes the final text of an answer that ended when /stop comes: nothing is left to
    stop, so the watchdog must not replace the (healthy) process a grace later."""
    grace = 0.3
    engine = Engine(load(int4_store[1]), SETTINGS, stop_grace_seconds=grace)
    pipeline = engine.model.pipeline
    events = []
    async for event in engine.ask("a", [], Turn("user", "Hi")):
        events.append(event)
        if isinstance(event, Finished):
            assert engine.cancel("a") is True, "the answer still holds its place until its caller lets go"
            await asyncio.sleep(grace + 1)
    assert finished(events).status == "complete"
    assert pipeline.alive and engine.model.pipeline is pipeline, "the process that answered was left alone"
    await engine.aclose()


async def test_closing_takes_seconds_with_a_stopped_process_and_lets_a_healthy_one_exit_on_its_own(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    loop = asyncio.get_running_loop()
    engine = Engine(load(int4_store[1]), SETTINGS)
    finished(await collect(engine, "a", [], Turn("user", "What is in it?", (photo((10, 20, 30)),))))
    started = loop.time()
    await engine.aclose()
    assert loop.time() - started < CLOSE_GRACE_SECONDS, "a healthy process exits when told, before any kill"

    engine = Engine(load(int4_store[1]), SETTINGS)
    pipeline = engine.model.pipeline
    with stopped(pipeline):
        answer = asyncio.create_task(collect(engine, "a", [], Turn("user", "And this?", (photo((9, 9, 9), LARGE),))))
        await asyncio.sleep(0.5)
        started = loop.time()
        async with loop_watch() as watch:
            await engine.aclose()
        closed_in = loop.time() - started
        done = finished(await asyncio.wait_for(answer, 1))
    assert closed_in < SHUTDOWN_GRACE_SECONDS + CLOSE_GRACE_SECONDS + 1, f"closing took {closed_in:.1f} s"
    assert watch.longest < 0.2, f"the event loop stalled for {watch.longest:.2f} s"
    assert done.status == "cancelled", done
    assert not alive(pipeline.pid or 0)


async def test_with_the_model_process_stopped_model_is_answered_at_once_and_stop_ends_the_answer_in_15_s(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    """The issue's scenario through the real bot: a photo question to a stopped model process, the asker's
    /stop, and another person's /model; with the real watchdog grace (STOP_GRACE_SECONDS)."""
    assert STOP_GRACE_SECONDS == 15
    settings = bot_settings(api, int4_store[0].root, tmp_path, max_new_tokens=4000)
    loop = asyncio.get_running_loop()
    async with running_bot(api, settings, long_answers=True) as bot:
        engine = bot.services.engine
        assert engine is not None
        pipeline = engine.model.pipeline
        with stopped(pipeline):
            async with loop_watch() as watch:
                question = photo_bytes((30, 160, 90), LARGE)
                api.push_message(USER, photo=question, caption="What is in this photo?", user_id=USER)
                await api.wait_for(lambda: engine.queue.running == 1, 30, "the question reaching the model")
                await asyncio.sleep(0.5)  # its pixels are on their way to a process that reads nothing
                api.push_message(USER, "/stop", user_id=USER)
                await api.wait_for(lambda: texts.STOPPING in api.visible_text(USER), 5, "Stopping.")
                stopped_at = loop.time()
                api.push_message(ADMIN, "/model", user_id=ADMIN)
                await api.wait_for(lambda: any("Model:" in t for t in api.visible_text(ADMIN)), 1, "/model")
                await api.wait_for(
                    lambda: engine.queue.running == 0, STOP_GRACE_SECONDS + 3, "the stopped answer to end"
                )
                ended_in = loop.time() - stopped_at
                # the answer's own message, not the "Stopping." reply (which looks finished too), and its record
                shown = lambda: any(looks_finished(m) and m.text != texts.STOPPING for m in api.messages(USER))  # noqa: E731
                await api.wait_for(shown, 5, "the stopped answer shown")
            stored = await stored_answers(bot, ConversationKey(USER), 1, timeout=5)
        assert watch.longest < 0.2, f"the event loop stalled for {watch.longest:.2f} s"
        assert ended_in <= STOP_GRACE_SECONDS + 2, f"the stopped answer ended {ended_in:.1f} s after /stop"
        assert [m.status for m in stored] == ["complete", "cancelled"]
        [answer] = [m for m in api.messages(USER) if m.text != texts.STOPPING]
        assert answer.text.endswith(texts.footer("cancelled", "").strip()), answer.text
        assert not alive(pipeline.pid or 0), "the watchdog ended the stopped process"

        engine.settings = replace(engine.settings, max_new_tokens=6)
        api.push_message(USER, "Are you back?", user_id=USER)
        await stored_answers(bot, ConversationKey(USER), 2, timeout=60)
        stored = await stored_messages(bot.services.history, ConversationKey(USER))
        assert [m.status for m in stored][2:] == ["complete", "complete"]
        assert engine.model.pipeline.pid != pipeline.pid, "a fresh process answered"


@pytest.mark.timeout(240)
async def test_sigterm_with_the_model_process_stopped_exits_within_5_s_and_keeps_the_answer(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    environment = bot_environment(api, int4_store[0].root, tmp_path / "data", MAX_NEW_TOKENS="4000")
    async with bot_process(environment, tmp_path, "tests.support.long_answers_bot") as bot:
        api.push_message(USER, "Tell me everything.", user_id=USER)
        await api.wait_for(lambda: bool(answer_drafts(api, USER)), 120, "an answer streaming")
        children = psutil.Process(bot.process.pid).children()
        [model] = [child for child in children if "spawn_main" in " ".join(child.cmdline())]
        model.suspend()
        try:
            started = asyncio.get_running_loop().time()
            bot.process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(bot.process.wait(), 30)
            took = asyncio.get_running_loop().time() - started
        finally:
            with contextlib.suppress(psutil.NoSuchProcess):
                model.kill()
    assert code == 0, bot.stderr[-3000:]
    assert took < 5, f"SIGTERM took {took:.1f} s"
    assert not model.is_running()
    stored = await read_history(tmp_path / "data", USER)
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "cancelled")]
    assert stored[1].text, "what was written before the stop is kept"
