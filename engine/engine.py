"""The inference engine: one OpenVINO GenAI pipeline shared fairly by every conversation, streaming into asyncio.

Data flow: ``ask()`` takes a ticket in the fair queue (one request per conversation, FIFO across them),
reports the queue position while waiting, then sends the job to the model's own process
(engine/pipeline_host.py) and yields the streamed text as it arrives; the event loop never waits on GenAI.

Design choices, measured on the full-size synthetic Phi-3.5-vision INT4 on 2 cores (benchmarks/): the
pipeline runs with continuous batching and prefix caching, because its KV blocks survive while another
conversation is answered, and a request that runs alone goes through GenAI's chat state, whose vision registry
keeps encoded photos (a follow-up after another conversation's photo question starts as fast as with raw
GenAI; benchmarks/engine_latency.py).  When several conversations are waiting, up to ``batch_max`` are
answered together, which takes well under the time of answering them one after another
(benchmarks/batching.py).

Work ahead of questions (``prepare``) does not take a place in line: the model's process reads it only while
no question waits, in pieces, so another conversation's question waits for one piece at most.

Conversations are opaque keys here: what a conversation is, and what renames one, is the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from engine.context_policy import MESSAGE_OVERHEAD, default_history_tokens, estimate_tokens, kv_cache_tokens
from engine.conversation import Turn
from engine.estimates import Estimate, Sample, Speed, first_text_in_line, together
from engine.fair_queue import AlreadyQueued, FairQueue, QueueFull, Ticket, TicketCancelled
from engine.generation import GenerationSettings, Status
from engine.images import PreparedImage, image_tokens
from engine.pipeline_process import LoadedModel
from engine.pipeline_protocol import Done, Reply, Report, Speech
from engine.pipeline_protocol import Heard as HeardReply
from engine.speed_book import SpeedBook, speed_key
from model_store.errors import ModelStoreError
from model_store.layout import read_json

log = logging.getLogger(__name__)

CALIBRATION_PHOTO = (1280, 960)  # Telegram's largest photo size, 4:3: what people's photos mostly come as
CALIBRATION_TOKENS = 16  # enough to measure the writing speed; the answer itself is never shown
_CALIBRATION = ("calibration",)  # the conversation the speed is measured in: no caller's key is a tuple of a str
STOP_GRACE_SECONDS = 15.0  # longer than the longest single call GenAI makes here (a 16-crop photo read whole)
SHUTDOWN_GRACE_SECONDS = 2.0  # at shutdown a process that has not confirmed a stop by then is ended: nobody waits


@dataclass(frozen=True)
class Waiting:
    """Still in line; ``position`` 1 means next.  ``seconds``: about how long until the answer's first text,
    from the measured speed (engine/estimates.py); None until that is known."""

    position: int
    seconds: float | None = None


@dataclass(frozen=True)
class Started:
    """The model took the question; ``seconds``: about how long until the first text (None until known), which
    for a question with ``images`` new images includes encoding them."""

    seconds: float | None = None
    images: int = 0


@dataclass(frozen=True)
class Heard:
    """What a question asked aloud says, written down before its answer starts; empty when no words were made
    out, and then no answer follows.  ``question``: the text answered (the question's own, then what was heard),
    which the conversation's history keeps in the question's place."""

    text: str
    question: str
    language: str | None = None  # as Whisper names it ("<|en|>")
    seconds: float = 0.0  # spent transcribing


@dataclass(frozen=True)
class Chunk:
    text: str


@dataclass(frozen=True)
class Finished:
    """An answer's end: how it ended and its text, the engine's timings, and what the model's process measured
    of it (``report``, as the process sent it)."""

    text: str
    status: Status
    error: str | None = None
    report: Report = field(default_factory=Report)
    ttft_seconds: float | None = None
    seconds: float = 0.0
    tokens_per_second: float | None = None

    @property
    def answer_tokens(self) -> int:
        """What the answer adds to the conversation as the context policy counts it; 0 when nothing was counted."""
        generated = self.report.generated_tokens
        return generated + MESSAGE_OVERHEAD if generated else 0


Event = Waiting | Started | Heard | Chunk | Finished


@dataclass(frozen=True)
class Prepared:
    """A preparation's end: read whole, replaced by newer work for the conversation, or failed (``error``)."""

    pieces: int
    seconds: float
    error: str | None = None


@dataclass
class _Running:
    grace: float  # seconds the model's process has to confirm a stop before it is replaced
    reason: Status | None = None  # why it was stopped, if it was
    stop: Callable[[], None] | None = None  # cancels the job in the model's process once it is there
    replace: Callable[[], None] | None = None  # ends that process, for one that does not stop
    alone: Estimate | None = None  # how long it would take answered alone, from the speed measured so far
    estimate: Estimate | None = None  # how long it takes as it runs: alone, or with the batch it is part of
    batch: list[Estimate] | None = None  # its batch's estimates alone, as it started: what a batched answer teaches
    started: float | None = None  # monotonic time the model took it
    first_text: bool = False  # its first text has come: it no longer slows its batch's reading
    halted: asyncio.Event = field(default_factory=asyncio.Event)  # set by the first stop
    _overdue: asyncio.TimerHandle | None = None

    def request_stop(self, reason: Status, grace: float | None = None) -> None:
        """``grace``: less time than usual for the process to confirm the stop (a shutdown), also for an answer
        already stopping."""
        if grace is not None and grace < self.grace:
            self.grace = grace
            if self._overdue is not None:
                loop = asyncio.get_running_loop()
                when = min(self._overdue.when(), loop.time() + grace)
                self._overdue.cancel()
                self._overdue = loop.call_at(when, self._replace)
        if self.reason is None:
            self.reason = reason
            self.halted.set()
            self.send_stop()

    def send_stop(self) -> None:
        """A cancel is honoured within a token or between two pieces of reading; a process that does not
        confirm it in time (stopped, hung, or stuck in one very long call) is replaced, so the answer always
        ends."""
        if self.stop is not None:
            self.stop()
            self._overdue = asyncio.get_running_loop().call_later(self.grace, self._replace)

    def _replace(self) -> None:
        if self.replace is not None:
            log.error("the model's process did not stop within %.0f s; replacing it", self.grace)
            self.replace()

    def ended(self) -> None:
        """Its job is over: a stop that comes while the caller still shows the answer has nothing to cancel, and
        the process that ran it is nobody's to replace."""
        self.stop = self.replace = None
        if self._overdue is not None:
            self._overdue.cancel()


@dataclass(frozen=True)
class Serving:
    """The model answering, as people are shown it."""

    source: str  # the repository or directory it was converted from (a service's model id if it says no more)
    precision: str
    device: str
    synthetic: bool = False
    service: str | None = None  # the model service's address, when it answers from there
    speech: str | None = None  # the speech model that hears voice questions ("openai/whisper-base, int8"), if loaded


class _ReadViews:
    """Which conversations the model's process has read, as far as the engine can tell (their answers and the
    views it read ahead, up to two per conversation: now, and after its coming step), so that an estimate
    counts what it will read again; a conversation not heard of for long is forgotten (read again, as the model's
    process would have let it go too)."""

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._views: OrderedDict[Hashable, list[tuple[int | None, tuple[int, ...]]]] = OrderedDict()

    def note(self, key: Hashable, pid: int | None, turns: Sequence[Turn]) -> None:
        views = [view for view in self._views.pop(key, []) if view[0] == pid][-1:]
        self._views[key] = [*views, (pid, _signature(turns))]
        while len(self._views) > self._capacity:
            self._views.popitem(last=False)

    def unread(self, key: Hashable, pid: int | None, past: Sequence[Turn]) -> Sequence[Turn]:
        """The turns of ``past`` after the longest part of it read by process ``pid``."""
        signature = _signature(past)
        read = [
            len(seen) for owner, seen in self._views.get(key, []) if owner == pid and signature[: len(seen)] == seen
        ]
        return past[max(read, default=0) :]


def _signature(turns: Sequence[Turn]) -> tuple[int, ...]:
    return tuple(hash(turn.message) for turn in turns)


@dataclass
class EngineStats:
    answered: int = 0
    cancelled: int = 0
    failed: int = 0
    timed_out: int = 0
    generated_tokens: int = 0
    busy_seconds: float = 0.0
    replays: int = 0
    prepared: int = 0
    prepared_steps: int = 0  # of those, views after a coming step of the context policy


class Engine:
    """Owns the loaded model and the line in front of it."""

    def __init__(
        self,
        model: LoadedModel,
        settings: GenerationSettings,
        *,
        queue_max: int = 20,
        batch_max: int = 1,
        history_tokens: int | None = None,
        stop_grace_seconds: float = STOP_GRACE_SECONDS,
        speed_book: SpeedBook | None = None,
    ) -> None:
        self._model = model
        self._book = speed_book
        self._closed = False
        self._saving: asyncio.Task[None] | None = None
        self._unsaved = False
        self.settings = settings
        self._history_tokens = history_tokens
        self._stop_grace = stop_grace_seconds
        # the line, and in each of its tickets the one record of an answer in progress (``_Running``)
        self.queue: FairQueue[Hashable, _Running] = FairQueue(max_waiting=queue_max, batch_max=batch_max)
        self._request_ids = itertools.count(1)
        self._restarting = asyncio.Lock()
        self.stats = EngineStats()
        # of the model serving now, measured from its answers (and kept in the book), and how long it loaded
        self._speed_key, self.speed, self._load_seconds = self._measured(model)
        self._warmed: int | None = None  # the model process that has read a photo: its kernels are warm
        self._read = _ReadViews()

    @property
    def model(self) -> LoadedModel:
        return self._model

    @property
    def num_crops(self) -> int:
        return self._model.num_crops

    @property
    def hears(self) -> bool:
        """A speech model is loaded: questions may be asked aloud (``ask``'s ``speech``)."""
        return self._model.pipeline.hears

    @property
    def serving(self) -> Serving:
        entry, speech = self._model.entry, self._model.pipeline.spec.speech
        heard_by = f"{speech.source}, {speech.precision}" if speech is not None and self.hears else None
        return Serving(entry.source, entry.precision, self._model.device, entry.synthetic, speech=heard_by)

    @property
    def kv_cache_tokens(self) -> int:
        model = self._model
        config = read_json(model.entry.path / "config.json")
        return kv_cache_tokens(config, kv_cache_gb=model.pipeline.spec.kv_cache_gb, device=model.device)

    @property
    def history_tokens(self) -> int:
        """The context policy's budget: as configured, or what a full batch of conversations can keep in the
        KV cache within the model's context (engine.context_policy.default_history_tokens)."""
        if self._history_tokens is not None:
            return self._history_tokens
        config = read_json(self._model.entry.path / "config.json")
        return default_history_tokens(
            config,
            kv_tokens=self.kv_cache_tokens,
            batch_size=self.queue.batch_max,
            max_new_tokens=self.settings.max_new_tokens,
        )

    def cancel(self, conversation: Hashable, *, grace: float | None = None) -> bool:
        """Stop the answer for ``conversation`` within one token (or drop it from the queue); True if there was
        one.  ``grace``: how long its process may take to confirm before it is replaced, if not the usual."""
        running = self.queue.job(conversation)
        if running is None:
            return False
        running.request_stop("cancelled", grace)
        self.queue.cancel(conversation)  # a waiting request leaves the line at once
        return True

    def cancel_all(self) -> int:
        """Shutdown: every answer stops within a token and keeps its text, and a process that does not confirm
        within ``SHUTDOWN_GRACE_SECONDS`` is ended rather than waited for; waiting ones leave the line."""
        conversations = [ticket.key for ticket in self.queue.in_line()]
        for conversation in conversations:
            self.cancel(conversation, grace=SHUTDOWN_GRACE_SECONDS)
        return len(conversations)

    async def ask(
        self,
        key: Hashable,
        past: Sequence[Turn],
        question: Turn,
        *,
        system_prompt: str | None = None,
        seed: int | None = None,
        asker: Hashable | None = None,
        settings: GenerationSettings | None = None,
        speech: Speech | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Answer ``question``; raises the queue's AlreadyQueued / QueueFull before yielding anything.

        ``system_prompt`` starts the prompt (None: the configured one); a different one is a different prefix,
        which the model reads anew.  ``seed``: the question is answered again, and the answer should differ.
        ``asker``: who asks, so that one asker's questions in several conversations take turns with everyone
        else's (engine/fair_queue.py).  ``settings``: the request's own in place of the configured ones (the
        model service's clients send theirs: service/http_app.py).  ``speech``: the question asked aloud; in
        its turn the model's process writes it down (``Heard``, before any other text) and answers what it heard
        after the question's own text."""
        settings = (settings or self.settings).for_request(system_prompt, seed)
        alone = self._estimate(key, past, question)
        running = _Running(self._stop_grace, alone=alone, estimate=alone)
        ticket = self.queue.enqueue(key, running, owner=asker)
        try:
            shown: Waiting | None = None
            async for position in ticket.changes():
                if position > 0:
                    waiting = Waiting(position, _plus(self._first_text_seconds(ticket), self._load_left()))
                    if shown is None or _news(shown, waiting):
                        shown = waiting
                        yield waiting
            async with ticket:
                running.alone = self._estimate(key, past, question)  # with what was measured while it waited
                running.estimate = self._batched(running) if ticket.batched else running.alone
                running.started = time.monotonic()
                first_text = running.estimate.first_text if running.estimate is not None else None
                yield Started(_plus(first_text, self._load_left()), len(question.images))
                generation = self._generate(key, past, question, settings, running, ticket.batched, speech)
                async with contextlib.aclosing(generation) as events:
                    async for event in events:
                        yield event
        except TicketCancelled:
            self.stats.cancelled += 1
            yield Finished(text="", status="cancelled")
        finally:
            self.queue.release(ticket)  # a caller gone while it waited gives its place back

    def _image_tokens(self, question: Turn) -> int:
        return sum(image_tokens(image.width, image.height, self._model.num_crops) for image in question.images)

    def _estimate(self, key: Hashable, past: Sequence[Turn], question: Turn) -> Estimate | None:
        """How long the answer takes alone, once the model has loaded: the question, and the part of the
        conversation the model's process has not read (all of it after a restart), read with it; the first
        photo a process reads takes its warm-up too."""
        unread = [*self._read.unread(key, self._model.pipeline.pid, past), question]
        images = sum(self._image_tokens(turn) for turn in unread)
        tokens = sum(estimate_tokens(turn.text, [self._image_tokens(turn)]) for turn in unread)
        estimate = self.speed.estimate(tokens, images, self.settings.max_new_tokens)
        factor = self.speed.warm_up_factor
        if estimate is None or not images or factor is None or self._warmed == self._model.pipeline.pid:
            return estimate
        longer = estimate.first_text * (factor - 1)
        return Estimate(estimate.first_text + longer, estimate.whole + longer, estimate.work + longer)

    def _load_left(self) -> float | None:
        """Seconds until the model has loaded, as long as its last load took (None when that is not known)."""
        if not self.loading:
            return 0.0
        if self._load_seconds is None:
            return None
        return max(self._load_seconds - (time.monotonic() - self._model.pipeline.started), 0.0)

    def _batched(self, running: _Running) -> Estimate | None:
        """A batched answer's estimate: its first text comes once the prompts of its batch that have shown no
        text yet are read together (engine/estimates.py)."""
        running_now = self.queue.in_line()[: self.queue.running]
        members = [ticket.job for ticket in running_now if not ticket.job.first_text]
        batch = [member.alone for member in members if member.alone is not None]
        if running.alone is None or len(batch) < len(members):
            return None
        running.batch = batch
        first_text = together(batch, self.speed.batch_share)
        if first_text is None:
            return None
        return Estimate(first_text, first_text + running.alone.whole - running.alone.first_text)

    def _first_text_seconds(self, ticket: Ticket[Hashable, _Running]) -> float | None:
        """About how long until the first text for the request waiting with ``ticket``: the answers running
        and waiting ahead of it, then its own start, batched with those it will run with (behind it too)."""
        everyone = self.queue.in_line()
        running = self.queue.running
        if ticket not in everyone[running:]:
            return None
        now = time.monotonic()
        left: list[float] = []
        for other in everyone[:running]:
            shown = other.job.estimate
            if shown is None:
                return None
            began = other.job.started if not self.loading else None  # nothing runs before the model has loaded
            left.append(max(shown.whole - (now - began if began is not None else 0.0), 0.0))
        waiting = [other.job.alone for other in everyone[running:]]
        known = [estimate for estimate in waiting if estimate is not None]
        if len(known) < len(waiting):
            return None
        place = everyone.index(ticket) - running
        return first_text_in_line(left, known, place, self.queue.batch_max, self.speed.batch_share)

    def _learn(self, question: Turn, finished: Finished, settings: GenerationSettings) -> None:
        """An answer that ran alone, from a conversation the model held (no photo read again), teaches the
        speed; a batched one's timings mix several conversations'.  The first photo answer of a model process is its
        warm-up, as OpenVINO prepares its kernels for the shapes it meets first: far slower than the next ones
        (benchmarks/progress_estimates.py), so it teaches nothing.  One held to fewer tokens than the configured
        answers says nothing of how long they are."""
        report = finished.report
        if finished.ttft_seconds is None or report.replays or finished.status == "failed":
            return
        if question.images and self._warmed != self._model.pipeline.pid:
            self._warmed = self._model.pipeline.pid
            return
        sample = Sample(
            question_tokens=report.question_tokens,
            image_tokens=self._image_tokens(question),
            first_text_seconds=finished.ttft_seconds,
            vision_seconds=report.vision_seconds,
            waited_seconds=report.waited_seconds,
            generated_tokens=report.generated_tokens,
            tokens_per_second=finished.tokens_per_second,
            complete=finished.status == "complete" and settings.max_new_tokens >= self.settings.max_new_tokens,
        )
        self.speed.record(sample)
        self._keep_speed()

    async def _generate(
        self,
        key: Hashable,
        past: Sequence[Turn],
        question: Turn,
        settings: GenerationSettings,
        running: _Running,
        batched: bool,
        speech: Speech | None,
    ) -> AsyncIterator[Event]:
        started = time.monotonic()
        parts: list[str] = []
        ttft: float | None = None
        heard: str | None = None
        for attempt in (1, 2):
            try:
                model = await self._live_model_for(running)
            except ModelStoreError as error:
                self.stats.failed += 1
                yield Finished(text="", status="failed", error=str(error))
                return
            if model is None:  # stopped, or out of time, while the model loaded: nothing was asked of it
                yield self._finish(Done(0), "", running, started, None)
                return
            request_id = next(self._request_ids)
            replies = model.pipeline.ask(request_id, key, past, question, settings, batched=batched, speech=speech)
            running.stop = functools.partial(model.pipeline.cancel, request_id)
            running.replace = model.pipeline.kill
            if running.reason is not None:  # stopped between the ticket and here
                running.send_stop()
            timer = asyncio.get_running_loop().call_later(
                self.settings.timeout_seconds, running.request_stop, "timeout"
            )
            done: Done | None = None
            try:
                while done is None:
                    reply = await replies.get()
                    if isinstance(reply, Done):
                        done = reply
                        continue
                    if isinstance(reply, HeardReply):
                        heard = reply.text
                        yield Heard(reply.text, reply.question, reply.language, reply.seconds)
                        continue
                    if ttft is None:
                        ttft = time.monotonic() - started
                        running.first_text = True
                    parts.append(reply.text)
                    yield Chunk(reply.text)
            finally:
                timer.cancel()
                if done is None:  # the caller went away: stop the job, and keep the slot until it has stopped
                    running.request_stop("cancelled")
                    stopped = await _until_done(replies)
                    self.stats.cancelled += 1
                    self.stats.generated_tokens += stopped.report.generated_tokens
                running.ended()
            if attempt == 1 and heard is None and _lost_before_a_word(done, parts, running, model):
                log.warning("the model's process died before answering; the question goes to a fresh one")
                continue
            break
        finished = self._finish(done, "".join(parts), running, started, ttft)
        if done.error is None and not batched:  # a batched answer is read apart from the conversation's chat state
            self._read.note(key, model.pipeline.pid, [*past, question])
        taught = speech is None  # a spoken question's first text came after its transcription: no measure of speed
        if taught and not batched:
            self._learn(question, finished, settings)
        elif taught and running.batch is not None and finished.ttft_seconds is not None and not finished.report.replays:
            self.speed.record_batch(finished.ttft_seconds, running.batch)
            self._keep_speed()
        yield finished

    async def loaded(self) -> None:
        """Returns once the model is loaded (at once if it is); raises ``ModelStoreError`` if it does not load."""
        await self._live_model()

    async def calibrate(self) -> bool:
        """Where nothing is known of this model's speed on this machine (a new install; another model, CPU or
        setting), measures it, so that the first photo anyone sends is shown an estimate: two made-up photos of
        the size Telegram sends, each asked about (a process's first photo warms its kernels up and teaches
        nothing), then a follow-up, each answer a few tokens long; in the line like anyone's question, so a
        person asking meanwhile waits for one of them at most.  Known means a photo's encoding and the writing
        speed have been measured here once.  Returns whether it measured."""
        if self.speed.vision_seconds_per_image_token is not None and self.speed.decode_tokens_per_second is not None:
            return False
        photos = await asyncio.to_thread(lambda: [_calibration_photo(shade) for shade in (0, 1)])
        first, second = (Turn("user", "What is in this picture?", (photo,)) for photo in photos)
        settings = replace(self.settings, max_new_tokens=CALIBRATION_TOKENS)
        follow_up = Turn("user", "And which colours are in it?")
        answer, answer_tokens = "", self.speed.answer_tokens
        first_texts: list[float] = []
        for question in (first, second, follow_up):
            past = [second, Turn("assistant", answer)] if question is follow_up else []
            try:
                async with contextlib.aclosing(self.ask(_CALIBRATION, past, question, settings=settings)) as events:
                    async for event in events:
                        if isinstance(event, Finished) and event.status != "complete":
                            log.warning("measuring the model's speed ended early: %s", event.error or event.status)
                            return False
                        if isinstance(event, Finished):
                            answer = event.text
                            first_texts.append(event.ttft_seconds or 0.0)
            except (AlreadyQueued, QueueFull):  # people's questions fill the line: they teach the speed instead
                return False
        if first_texts[0] > first_texts[1] > 0:  # the same photo question, before and after the warm-up
            self.speed.warm_up_factor = first_texts[0] / first_texts[1]
        self.forget(_CALIBRATION)
        self.speed.answer_tokens = answer_tokens  # a made-up answer says nothing of how long people's answers are
        self._keep_speed()
        measured = self.speed.vision_seconds_per_image_token is not None  # not if batched with people's questions
        log.info("measured the model's speed on this machine: %s", self.speed.saved() if measured else "not alone")
        return measured

    @property
    def loading(self) -> bool:
        return not self._model.pipeline.loaded

    async def _live_model_for(self, running: _Running) -> LoadedModel | None:
        """The live model for an answer, or None if the answer was stopped while the model loaded (a stop, or
        ``timeout_seconds`` spent waiting: a load that hangs holds nobody's question for ever)."""
        if not self.loading:
            return await self._live_model()
        loading = asyncio.ensure_future(self._live_model())
        loading.add_done_callback(_retrieved)
        halted = asyncio.ensure_future(running.halted.wait())
        try:
            await asyncio.wait({loading, halted}, timeout=self.settings.timeout_seconds, return_when="FIRST_COMPLETED")
        finally:
            halted.cancel()
        if loading.done():
            return loading.result()
        loading.cancel()  # it only waits for the load (shielded), which goes on for the next question
        running.request_stop("timeout")  # nothing if it was stopped
        return None

    async def _live_model(self) -> LoadedModel:
        """The model once loaded, in a fresh process if its process died (one restart shared by the waiting
        requests); a model that never loaded is not loaded again: its error is raised every time."""
        async with self._restarting:
            while not self._model.pipeline.loaded:
                model = self._model
                waiting = asyncio.wrap_future(model.pipeline.ready)
                waiting.add_done_callback(_retrieved)
                try:
                    await asyncio.shield(waiting)
                except ModelStoreError:
                    if self._model is model:
                        raise
                    continue  # another model was swapped in while this one loaded: that one counts
                if self._model is model:
                    self._load_seconds = model.pipeline.load_seconds
                    self._keep_speed()
            if self._closed:
                raise ModelStoreError("model_process_ended", exitcode=None)
            if not self._model.pipeline.alive:
                log.warning("restarting the model process")
                self._model = await asyncio.to_thread(self._model.restarted)
        return self._model

    def _finish(self, done: Done, text: str, running: _Running, started: float, ttft: float | None) -> Finished:
        seconds = time.monotonic() - started
        self.stats.busy_seconds += seconds
        if done.error is not None and running.reason is None:  # asked to stop, it ends stopped whatever its process did
            log.error("generation failed: %s", done.error)
            self.stats.failed += 1
            counted = Report(question_tokens=done.report.question_tokens)  # what it did was not finished
            return Finished(text=text, status="failed", error=done.error, report=counted, seconds=seconds)
        status: Status = running.reason or "complete"
        if status == "complete":
            self.stats.answered += 1
        elif status == "timeout":
            self.stats.timed_out += 1
        else:
            self.stats.cancelled += 1
        generated = done.report.generated_tokens
        self.stats.generated_tokens += generated
        self.stats.replays += done.report.replays
        decode_seconds = seconds - ttft if ttft is not None else 0.0
        return Finished(
            text=done.text if status == "complete" else text,
            status=status,
            report=done.report,
            ttft_seconds=ttft,
            seconds=seconds,
            tokens_per_second=(generated - 1) / decode_seconds if decode_seconds > 0 and generated > 1 else None,
        )

    async def prepare(
        self, key: Hashable, past: Sequence[Turn], *, system_prompt: str | None = None, ahead: bool = False
    ) -> Prepared:
        """Have the model read ``past`` before the conversation's next question comes (a photo sent without a
        question, a step of the context policy, a restart, a new system prompt); returns once it is read,
        replaced or failed.  ``system_prompt`` as for ``ask``.  ``ahead``: ``past`` is the view after the
        conversation's coming step (engine/context_policy.py ``planned_step``), read beside its current view,
        which the model's process keeps too, until the step's question takes it over."""
        started = time.monotonic()
        try:
            model = await self._live_model()
        except ModelStoreError as error:
            return Prepared(0, 0.0, str(error))
        settings = self.settings.for_request(system_prompt, None)
        done = await _until_done(model.pipeline.prepare(next(self._request_ids), key, past, settings, ahead=ahead))
        if done.error is None:
            self.stats.prepared += 1
            self.stats.prepared_steps += ahead
            self._read.note(key, model.pipeline.pid, past)
            if done.pieces and any(turn.images for turn in past):  # it read a photo: the kernels are warm
                self._warmed = model.pipeline.pid
        else:
            log.warning("preparing a conversation failed: %s", done.error)
        return Prepared(done.pieces, time.monotonic() - started, done.error)

    def forget(self, key: Hashable) -> None:
        """A conversation was reset: the model's process drops what it kept for it."""
        self._model.pipeline.drop(key)

    async def swap(self, model: LoadedModel) -> LoadedModel:
        """Switch models between two requests; the previous one's process is closed and it is returned."""
        async with self.queue.held():
            previous, self._model = self._model, model
            self._speed_key, self.speed, self._load_seconds = self._measured(model)  # another model's, or nothing
        log.info("now serving %s (%s)", model.entry.source, model.entry.precision)
        await asyncio.to_thread(previous.pipeline.close)
        return previous

    async def aclose(self) -> None:
        """Running answers stop and keep their text; waiting ones leave the line rather than meet a closed
        model, whose dead process would otherwise be restarted for them."""
        self._closed = True  # nothing asked after this restarts its process
        self.cancel_all()
        await asyncio.to_thread(self._model.pipeline.close)
        if self._saving is not None:
            await self._saving

    def _measured(self, model: LoadedModel) -> tuple[str, Speed, float | None]:
        """The model's name in the book, what the book says of it on this machine (a small file, read once per
        model), and how long it took to load: this time once it has, else the last time."""
        key = speed_key(model.entry.source, model.entry.precision, model.device, model.pipeline.spec.properties)
        speed, load_seconds = self._book.read(key) if self._book is not None else (Speed(), None)
        return key, speed, model.pipeline.load_seconds if model.pipeline.loaded else load_seconds

    def _keep_speed(self) -> None:
        """The book gets the latest figures, written outside the event loop, one write at a time."""
        if self._book is None:
            return
        self._unsaved = True
        if self._saving is None or self._saving.done():
            self._saving = asyncio.get_running_loop().create_task(self._save_speed(self._book))

    async def _save_speed(self, book: SpeedBook) -> None:
        while self._unsaved:
            self._unsaved = False
            await asyncio.to_thread(book.write, self._speed_key, self.speed.saved(), self._load_seconds)


def _plus(seconds: float | None, more: float | None) -> float | None:
    return None if seconds is None or more is None else seconds + more


def _retrieved(future: asyncio.Future[object]) -> None:
    """A wait nobody awaits any more (its asker stopped) keeps its outcome to itself, unlogged."""
    if not future.cancelled():
        future.exception()


def _calibration_photo(shade: int) -> PreparedImage:
    """A picture of the size Telegram sends photos in (its longest side 1280 pixels): gradients and a square,
    so that it is not a blank the model reads differently; each ``shade`` another picture."""
    width, height = CALIBRATION_PHOTO
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    pixels[..., 1] = np.linspace(255, 0, height, dtype=np.uint8)[:, None]
    pixels[..., 2] = 60 * shade
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (240, 200, 40)
    sha256 = hashlib.sha256(pixels.tobytes()).hexdigest()
    return PreparedImage(pixels, sha256, width, height, width, height, "calibration")


def _lost_before_a_word(done: Done, parts: list[str], running: _Running, model: LoadedModel) -> bool:
    """The model's process died (a crash in OpenVINO, the out-of-memory killer) before this answer's first
    word, and nobody stopped it: the question is asked once more of the fresh process, as nothing was shown;
    a question that kills the process itself then fails the second time."""
    return done.error is not None and not parts and not model.pipeline.alive and running.reason is None


def _news(shown: Waiting, now: Waiting) -> bool:
    """Whether a new place-in-line status is worth showing: a new place, or an estimate that moved by more than
    a fifth (a batch forming behind changes how long the wait is, not the place)."""
    if now.position != shown.position or (now.seconds is None) != (shown.seconds is None):
        return True
    return (
        now.seconds is not None
        and shown.seconds is not None
        and abs(now.seconds - shown.seconds) > max(2.0, 0.2 * shown.seconds)
    )


async def _until_done(replies: asyncio.Queue[Reply]) -> Done:
    while not isinstance(reply := await replies.get(), Done):
        pass
    return reply
