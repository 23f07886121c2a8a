"""The inference engine: one OpenVINO GenAI pipeline shared fairly by every chat, streaming into asyncio.

Data flow: ``ask()`` takes a ticket in the fair queue (one request per conversation, FIFO across them),
reports the queue position while waiting, then runs ``VLMPipeline.generate`` on a worker thread (GenAI
releases the GIL, so the event loop keeps serving other chats) and yields the streamed text as it arrives.

Design choices, measured on the full-size synthetic Phi-3.5-vision INT4 on 2 cores (benchmarks/engine.py):
the pipeline runs with continuous batching and prefix caching, because its KV blocks survive while another
chat is answered (a follow-up after another chat's image question started in 1.1 s, against 13.2 s for the
plain pipeline, which has to prefill the conversation again); GenAI's vision registry keeps encoded images,
so follow-ups never re-encode a photo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.conversation import Generate, Sessions, Turn
from engine.fair_queue import AlreadyQueued, FairQueue, TicketCancelled
from engine.generation import GenerationSettings
from engine.images import PreparedImage, for_genai
from model_store.loader import LoadedModel

log = logging.getLogger(__name__)

Status = Literal["complete", "cancelled", "timeout", "failed"]


@dataclass(frozen=True)
class Waiting:
    """Still in line; ``position`` 1 means next."""

    position: int


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class Chunk:
    text: str


@dataclass(frozen=True)
class Finished:
    text: str
    status: Status
    error: str | None = None
    input_tokens: int = 0
    generated_tokens: int = 0
    ttft_seconds: float | None = None
    seconds: float = 0.0
    tokens_per_second: float | None = None


Event = Waiting | Started | Chunk | Finished


@dataclass
class _Running:
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: Status = "cancelled"


@dataclass
class EngineStats:
    answered: int = 0
    cancelled: int = 0
    failed: int = 0
    timed_out: int = 0
    generated_tokens: int = 0
    busy_seconds: float = 0.0


class Engine:
    """Owns the pipeline; everything that touches it runs on one worker thread."""

    def __init__(
        self,
        model: LoadedModel,
        settings: GenerationSettings,
        *,
        queue_max: int = 20,
        session_capacity: int = 64,
    ) -> None:
        self._model = model
        self.settings = settings
        self.queue: FairQueue[Hashable] = FairQueue(max_waiting=queue_max)
        self._sessions = Sessions(session_capacity)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genai")
        self._model_lock = asyncio.Lock()
        self._running: dict[Hashable, _Running] = {}
        self._moved: dict[Hashable, Hashable] = {}  # a conversation's new key -> the key its answer runs under
        self.stats = EngineStats()

    @property
    def model(self) -> LoadedModel:
        return self._model

    def is_busy(self, key: Hashable) -> bool:
        return self.queue.position(self.running_key(key)) is not None

    def follow_move(self, old: Hashable, new: Hashable) -> bool:
        """A conversation got a new key while its answer runs (a group became a supergroup): /stop and the
        one-question-at-a-time rule follow it to the new key until that answer ends.  False if none runs."""
        if old not in self._running:
            return False
        self._moved[new] = old
        return True

    def running_key(self, key: Hashable) -> Hashable:
        """The key the answer for ``key`` runs under: ``key`` itself unless the conversation moved meanwhile."""
        return self._moved.get(key, key)

    def cancel(self, key: Hashable) -> bool:
        """Stop the answer for ``key`` within one token (or drop it from the queue); True if there was one."""
        key = self.running_key(key)
        running = self._running.get(key)
        if running is None:
            return False
        running.reason = "cancelled"
        running.cancel.set()
        self.queue.cancel(key)  # a waiting request leaves the line at once
        return True

    def cancel_all(self) -> int:
        """Shutdown: every answer stops within a token and keeps its text; waiting ones leave the line."""
        keys = list(self._running)
        for key in keys:
            self.cancel(key)
        return len(keys)

    async def ask(self, key: Hashable, past: Sequence[Turn], question: Turn) -> AsyncIterator[Event]:
        """Answer ``question``; raises the queue's AlreadyQueued / QueueFull before yielding anything."""
        if key in self._moved and self.is_busy(key):
            raise AlreadyQueued(f"{key!r} is still being answered under {self._moved[key]!r}")
        ticket = self.queue.enqueue(key)
        running = _Running()
        self._running[key] = running
        try:
            async for position in ticket.positions():
                if position > 0:
                    yield Waiting(position)
            try:
                async with ticket:
                    yield Started()
                    async for event in self._generate(key, past, question, running):
                        yield event
            except TicketCancelled:
                self.stats.cancelled += 1
                yield Finished(text="", status="cancelled")
        finally:
            running.cancel.set()
            self._running.pop(key, None)
            for new in [new for new, old in self._moved.items() if old == key]:
                del self._moved[new]

    async def _generate(
        self, key: Hashable, past: Sequence[Turn], question: Turn, running: _Running
    ) -> AsyncIterator[Event]:
        import openvino_genai as genai

        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[str] = asyncio.Queue()
        started = time.monotonic()
        first_chunk: list[float] = []

        def streamer(text: str) -> Any:
            if not first_chunk:
                first_chunk.append(time.monotonic() - started)
            loop.call_soon_threadsafe(chunks.put_nowait, text)
            return genai.StreamingStatus.CANCEL if running.cancel.is_set() else genai.StreamingStatus.RUNNING

        def timed_out() -> None:
            running.reason = "timeout"
            running.cancel.set()

        async with self._model_lock:
            pipeline = self._model.pipeline
            config = self.settings.to_genai()
            prime = self.settings.to_genai()
            prime.max_new_tokens = 1
            job = loop.run_in_executor(
                self._worker,
                self._sessions.run,
                _bind_generate(pipeline, self._model.num_crops),
                key,
                self.settings.system_prompt,
                list(past),
                question,
                config,
                streamer,
                prime,
            )
            timer = loop.call_later(self.settings.timeout_seconds, timed_out)
            parts: list[str] = []
            try:
                while True:
                    getter = asyncio.ensure_future(chunks.get())
                    done, _ = await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
                    if getter in done:
                        parts.append(getter.result())
                        yield Chunk(parts[-1])
                        continue
                    getter.cancel()
                    while not chunks.empty():
                        parts.append(chunks.get_nowait())
                        yield Chunk(parts[-1])
                    break
            finally:
                timer.cancel()
                if not job.done():
                    running.cancel.set()
                    with contextlib.suppress(Exception):
                        await asyncio.shield(job)
            yield self._finish(job, "".join(parts), running, started, first_chunk)

    def _finish(
        self, job: asyncio.Future[Any], text: str, running: _Running, started: float, first_chunk: list[float]
    ) -> Finished:
        seconds = time.monotonic() - started
        self.stats.busy_seconds += seconds
        error = job.exception()
        if error is not None:
            log.error("generation failed: %s", error, exc_info=error)
            self.stats.failed += 1
            return Finished(text=text, status="failed", error=str(error), seconds=seconds)
        metrics = job.result().perf_metrics
        generated = int(metrics.get_num_generated_tokens())
        ttft = first_chunk[0] if first_chunk else None
        status: Status = running.reason if running.cancel.is_set() else "complete"
        if status == "complete":
            self.stats.answered += 1
        elif status == "timeout":
            self.stats.timed_out += 1
        else:
            self.stats.cancelled += 1
        self.stats.generated_tokens += generated
        decode_seconds = seconds - ttft if ttft is not None else 0.0
        return Finished(
            text=job.result().texts[0] if status == "complete" else text,
            status=status,
            input_tokens=int(metrics.get_num_input_tokens()),
            generated_tokens=generated,
            ttft_seconds=ttft,
            seconds=seconds,
            tokens_per_second=(generated - 1) / decode_seconds if decode_seconds > 0 and generated > 1 else None,
        )

    async def swap(self, model: LoadedModel) -> LoadedModel:
        """Switch models between two requests; returns the previous one (the caller drops it)."""
        async with self._model_lock:
            previous, self._model = self._model, model
            await asyncio.get_running_loop().run_in_executor(self._worker, self._sessions.clear)
        log.info("now serving %s (%s)", model.entry.source, model.entry.precision)
        return previous

    async def aclose(self) -> None:
        for running in self._running.values():
            running.cancel.set()
        self._worker.shutdown(wait=True, cancel_futures=True)


def _bind_generate(pipeline: Any, num_crops: int) -> Generate:
    import openvino as ov

    def generate(history: Any, images: Sequence[PreparedImage], config: Any, streamer: Any) -> Any:
        tensors = [ov.Tensor(for_genai(image.pixels, num_crops)) for image in images]
        return pipeline.generate(history, images=tensors, generation_config=config, streamer=streamer)

    return generate
