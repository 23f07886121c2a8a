"""The bot's side of the model's process (engine/pipeline_host.py): starts it, sends it jobs, preparations and
cancels, and hands each request's replies to the event loop that asked.

Nothing here makes the event loop wait on that process: a writer thread sends the commands in the order they
were given (a cancel never overtakes its job, a shutdown comes last), so a process that stops reading (stopped,
hung, or holding its GIL in a long GenAI call) blocks that thread when the pipe is full, not the loop; a reader
thread waits for the replies; the lock the loop takes is only ever held for bookkeeping.  If the process dies
(a crash, the out-of-memory killer, a kill by the engine's watchdog), every open request ends with an error
that says so and ``alive`` turns false; the engine then starts a fresh process from the same ``PipelineSpec``.

Images go to the model's process once: this side keeps the list of what that process holds (least recently
used first, bounded in bytes) and tells it what to drop, never an image a request still in flight needs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace

from engine.conversation import Turn
from engine.generation import GenerationSettings
from engine.images import PreparedImage
from engine.pipeline_host import serve
from engine.pipeline_protocol import (
    Cancel,
    Command,
    Done,
    Drop,
    Job,
    LoadFailed,
    NewImages,
    Prepare,
    Ready,
    Reply,
    Shutdown,
    Speech,
)
from model_store.child_start import new_child
from model_store.errors import ModelStoreError
from model_store.loader import PipelineSpec
from model_store.store import ModelEntry

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
CLOSE_GRACE_SECONDS = 2.0  # a process told to shut down that has not exited by then (stopped, hung) is killed
KILL_WAIT_SECONDS = 2.0  # for a killed process to be gone, and the threads that talked to it to end
HELD_IMAGE_BYTES = 256 * 1024 * 1024  # pixels the model's process keeps for conversations it may read again
Sink = tuple[asyncio.AbstractEventLoop, "asyncio.Queue[Reply]"]


class _HeldImages:
    """The images the model's process holds, as this side decided, in the order the commands carrying them are
    sent; not thread-safe (callers hold a lock)."""

    def __init__(self, capacity: int = HELD_IMAGE_BYTES) -> None:
        self._capacity = capacity
        self._held: OrderedDict[str, int] = OrderedDict()  # sha256 -> bytes, least recently used first
        self._in_flight: dict[int, set[str]] = {}

    def send(self, request_id: int, images: Sequence[PreparedImage]) -> tuple[NewImages, tuple[str, ...]]:
        """The pixels to send with a request, and what the model's process may drop to make room."""
        new: NewImages = {}
        for image in images:
            if image.sha256 in self._held:
                self._held.move_to_end(image.sha256)
            elif image.sha256 not in new:
                new[image.sha256] = image.pixels
                self._held[image.sha256] = image.pixels.nbytes
        self._in_flight[request_id] = {image.sha256 for image in images}
        busy = set().union(*self._in_flight.values())
        total = sum(self._held.values())
        forget = []
        for sha in list(self._held):
            if total <= self._capacity:
                break
            if sha not in busy:
                total -= self._held.pop(sha)
                forget.append(sha)
        return new, tuple(forget)

    def done(self, request_id: int) -> None:
        self._in_flight.pop(request_id, None)


def _images(turns: Sequence[Turn]) -> list[PreparedImage]:
    return [image for turn in turns for image in turn.images]


class PipelineProcess:
    """One model in one child process, started at once and loaded there meanwhile: ``wait_loaded`` blocks until
    it is (the bot takes questions, and shows they are seen, while its model loads)."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self._connection, child_end = multiprocessing.Pipe()
        self._process = new_child(
            serve, (spec, child_end, logging.getLogger().getEffectiveLevel()), name="phi3bot-model"
        )
        self._process.start()
        child_end.close()
        self.started = time.monotonic()
        self._lock = threading.Lock()  # guards the sinks, the held images and the order of the outbox; held briefly
        self._sinks: dict[int, Sink] = {}
        self._held = _HeldImages()
        self._outbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()  # None: the writer's last
        self._dead: str | None = None
        self.load_seconds: float | None = None  # from the start of the process to Ready, once loaded
        self._hears = False
        self._writer = threading.Thread(target=self._write, name="model-commands", daemon=True)
        self._reader = threading.Thread(target=self._read, name="model-replies", daemon=True)
        # one thread waits for the model to load, whoever else waits for it (``ready``, ``wait_loaded``)
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loader = threading.Thread(target=self._load, name="model-loading", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            ready = self._await_ready()
        except BaseException as error:
            with self._lock:
                self._dead = "the model did not load"
                orphans, self._sinks = self._sinks, {}
            self._reap(CLOSE_GRACE_SECONDS)
            for request_id, sink in orphans.items():  # nothing is sent before the model loads; in case
                _deliver(sink, Done(request_id, error=self._dead))
            failure = error
            if not isinstance(error, ModelStoreError):
                failure = ModelStoreError("load_crashed", source=self.spec.entry.source, error=str(error))
            self.ready.set_exception(failure)
            return
        self._hears = ready.hears
        self._writer.start()
        self._reader.start()
        self.load_seconds = time.monotonic() - self.started
        self.ready.set_result(None)

    def wait_loaded(self) -> None:
        """Blocking: returns once the model is loaded; raises ``ModelStoreError`` (and the process is gone) if it
        never will be, every time it is asked."""
        self.ready.result()

    @property
    def loaded(self) -> bool:
        return self.load_seconds is not None

    @property
    def hears(self) -> bool:
        """A speech model is loaded beside the vision model (while loading: one is meant to be)."""
        return self._hears if self.loaded else self.spec.speech is not None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._dead is None

    def _await_ready(self) -> Ready:
        while True:
            if self._connection.poll(POLL_SECONDS):
                try:
                    reply = self._connection.recv()
                except EOFError:
                    break
                if isinstance(reply, Ready):
                    return reply
                if isinstance(reply, LoadFailed):
                    raise ModelStoreError(reply.reason, **reply.data)
            elif not self._process.is_alive():
                break
        self._process.join()
        raise ModelStoreError("model_process_ended", exitcode=self._process.exitcode)

    def ask(
        self,
        request_id: int,
        key: Hashable,
        past: Sequence[Turn],
        question: Turn,
        settings: GenerationSettings,
        *,
        batched: bool,
        speech: Speech | None = None,
    ) -> asyncio.Queue[Reply]:
        """The answer's replies arrive on the returned queue: for ``speech``, first what was ``Heard``; then
        ``Text`` chunks, then one ``Done``."""

        def job(images: NewImages, forget: tuple[str, ...]) -> Job:
            messages = tuple(turn.message for turn in past)
            return Job(request_id, key, messages, question.message, settings, batched, images, forget, speech)

        return self._submit(request_id, _images([*past, question]), job)

    def prepare(
        self, request_id: int, key: Hashable, past: Sequence[Turn], settings: GenerationSettings, *, ahead: bool
    ) -> asyncio.Queue[Reply]:
        """Have ``past`` read ahead of the next question (``ahead``: the view after the conversation's coming
        step); one ``Done`` arrives when it is (or when replaced)."""

        def preparation(images: NewImages, forget: tuple[str, ...]) -> Prepare:
            return Prepare(request_id, key, tuple(turn.message for turn in past), settings, images, forget, ahead)

        return self._submit(request_id, _images(past), preparation)

    def _submit(
        self,
        request_id: int,
        images: Sequence[PreparedImage],
        command: Callable[[NewImages, tuple[str, ...]], Job | Prepare],
    ) -> asyncio.Queue[Reply]:
        replies: asyncio.Queue[Reply] = asyncio.Queue()
        with self._lock:
            if self._dead is not None:
                replies.put_nowait(Done(request_id, error=self._dead))
                return replies
            self._sinks[request_id] = (asyncio.get_running_loop(), replies)
            self._outbox.put(command(*self._held.send(request_id, images)))
        return replies

    def drop(self, key: Hashable) -> None:
        """Forget a conversation's chat state in the model's process (it was reset)."""
        with self._lock:
            if self._dead is None:
                self._outbox.put(Drop(key))

    def cancel(self, request_id: int) -> None:
        with self._lock:
            if self._dead is None and request_id in self._sinks:
                self._outbox.put(Cancel(request_id))

    def _write(self) -> None:
        """Pickles and sends each command in turn; waits here, never on the event loop, while the pipe is full."""
        while (command := self._outbox.get()) is not None:
            try:
                self._connection.send(command)
            except OSError:  # the process is gone: the reader ends the open requests with the reason
                return

    def _read(self) -> None:
        while True:
            try:
                reply: Reply = self._connection.recv()
            except (EOFError, OSError):
                break
            assert not isinstance(reply, Ready | LoadFailed)
            with self._lock:
                sink = self._sinks.get(reply.request_id)
                if isinstance(reply, Done):
                    self._sinks.pop(reply.request_id, None)
                    self._held.done(reply.request_id)
            if sink is not None:
                _deliver(sink, reply)
        self._process.join(POLL_SECONDS * 10)
        reason = f"The model process ended with exit code {self._process.exitcode}; it is being restarted."
        with self._lock:
            self._dead = reason
            orphans, self._sinks = self._sinks, {}
            self._outbox.put(None)  # the writer, if it waits for a command, has nothing more to send
        if orphans:
            log.error("%s (%d answers lost)", reason, len(orphans))
        for request_id, sink in orphans.items():
            _deliver(sink, Done(request_id, error=reason))

    def kill(self) -> None:
        """End a process that does not answer; its open requests end with an error saying so, and the
        engine starts a fresh one for the next question."""
        with contextlib.suppress(OSError):
            self._process.kill()

    def close(self) -> None:
        """Blocking, for seconds at most: open requests are cancelled and end with what they have, and the process
        is told to exit; one that has not exited within ``CLOSE_GRACE_SECONDS`` (stopped, hung, or inside one
        long GenAI call) is killed, so a shutdown or a swap never waits on it.  One still loading is killed."""
        if not self.ready.done():
            self.kill()  # the loading thread sees it end, and closes the pipe
        with contextlib.suppress(ModelStoreError, concurrent.futures.TimeoutError):
            self.ready.result(timeout=KILL_WAIT_SECONDS + CLOSE_GRACE_SECONDS)
        if not self.loaded:
            return
        with self._lock:
            if self._dead is None:
                for request_id in self._sinks:
                    self._outbox.put(Cancel(request_id))
                self._outbox.put(Shutdown())
            self._outbox.put(None)
        self._reader.join(CLOSE_GRACE_SECONDS)  # it ends once the process has exited
        if self._reader.is_alive():
            log.warning("the model process did not exit within %.0f s; killing it", CLOSE_GRACE_SECONDS)
            self.kill()
        for thread in (self._reader, self._writer):
            thread.join(KILL_WAIT_SECONDS)
        if self._reader.is_alive() or self._writer.is_alive():  # a thread still on the pipe: leave it open
            log.error("the model process %s could not be ended", self.pid)
            return
        self._reap(0)

    def _reap(self, grace: float) -> None:
        """Gives the process ``grace`` seconds to exit, kills it if it has not, and closes the pipe."""
        self._process.join(grace)
        if self._process.is_alive():
            self.kill()
            self._process.join(KILL_WAIT_SECONDS)
        self._connection.close()


def _deliver(sink: Sink, reply: Reply) -> None:
    loop, replies = sink
    with contextlib.suppress(RuntimeError):  # that event loop has closed: nobody is listening any more
        loop.call_soon_threadsafe(replies.put_nowait, reply)


@dataclass(frozen=True)
class LoadedModel:
    """A model in its process, loaded or still loading there (``pipeline.wait_loaded``)."""

    pipeline: PipelineProcess
    entry: ModelEntry
    device: str
    num_crops: int = 4  # as GenAI was told (preprocessor_config.json)

    def restarted(self) -> LoadedModel:
        """The same model in a fresh process, after its process died (whose pipe is closed first); blocking."""
        self.pipeline.close()
        process = PipelineProcess(self.pipeline.spec)
        process.wait_loaded()
        return replace(self, pipeline=process)


def start_pipeline(spec: PipelineSpec) -> LoadedModel:
    """The model's process started (``model_store.loader.pipeline_spec`` checked its files); it loads meanwhile."""
    return LoadedModel(PipelineProcess(spec), spec.entry, spec.device, spec.num_crops)


def load_pipeline(spec: PipelineSpec) -> LoadedModel:
    """Blocking: the model loaded in a process of its own."""
    model = start_pipeline(spec)
    model.pipeline.wait_loaded()
    return model
