"""The model's own process: compiles the pipeline and answers the jobs the engine sends over a pipe.

Why a process of its own: GenAI's batching calls (``add_request``, ``step``) keep Python's GIL for seconds
(measured by benchmarks/gil_hold.py), which would freeze the bot for every conversation if they ran in the bot's
process; here they freeze nothing but this loop.  An OpenVINO crash or an out-of-memory kill of the model
also leaves the bot up, and a swapped-out model gives all its memory back when its process exits.

A job that runs alone goes through GenAI's chat state (``Sessions``), which keeps the conversation's encoded
photos and KV blocks, so a follow-up pays only for its new tokens.  Batched jobs enter through
``add_request`` as one templated prompt each (their earlier photos are encoded again; prefix caching spares
the language model's part) and are stepped together, one token each per step; a cancel is seen between
steps.  The engine never mixes the two: a lone job is sent only when no batch runs.

Preparations (``Prepare``) are read only while no job waits, one piece at a time (see engine/conversation.py):
a question that arrives meanwhile waits for the piece being read, not for the whole preparation.  A
conversation near a step of the context policy has two: its current view, and the view after the step, read
into a session of its own that the step's question then takes over.  Text is
cut into pieces sized from the reading speed measured here, so that each takes about ``PIECE_SECONDS``; a
photo message is one piece, because GenAI encodes and reads an image in one call.

The store's speech model (Whisper), when there is one, is loaded here beside the vision model: a question asked
aloud comes as a job with its sound and is written down when its turn comes, then answered as if typed.  Both
models share the process's cores, and the fair queue orders voice questions with everyone else's.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from engine.context_policy import MESSAGE_OVERHEAD
from engine.conversation import Message, Piece, Session, Sessions, Tokens, conversation, tagged_messages
from engine.generation import GenerationSettings
from engine.images import for_genai, image_tokens
from engine.pipeline_protocol import (
    SPEECH_SAMPLE_RATE,
    Cancel,
    Command,
    Done,
    Drop,
    Heard,
    Job,
    LoadFailed,
    NewImages,
    Prepare,
    Ready,
    Reply,
    Report,
    Shutdown,
    Speech,
    Text,
)
from engine.prompt_text import as_plain_text
from model_store.errors import ModelStoreError
from model_store.loader import PipelineSpec, compile_pipeline, compile_speech

log = logging.getLogger(__name__)

PIECE_SECONDS = 1.0  # how long a piece of text read ahead may take: another conversation's question waits at most this
FIRST_PIECE_TOKENS = 64  # until the reading speed has been measured here
NO_SPEECH_MODEL = "no speech model is loaded"
# Fast speech is about five tokens a second; Whisper writes each 30 s window on its own.
TRANSCRIPT_TOKENS_PER_SECOND = 6
TRANSCRIPT_SPARE_TOKENS = 16
WHISPER_WINDOW_SECONDS = 30.0
# A timestamp token a model writes though none were asked for (one with random weights does): not words.
_TIMESTAMP = re.compile(r"<\|\d+\.\d+\|>")


def serve(spec: PipelineSpec, connection: Connection, log_level: int) -> None:
    """The child's work (started by model_store/child_start.py, so it dies with the bot): load, say Ready (or
    why not), then answer jobs until told to stop."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s model: %(message)s")
    started = time.monotonic()
    try:
        pipeline = compile_pipeline(spec)
    except ModelStoreError as error:
        connection.send(LoadFailed(error.reason, error.data))
        return
    except Exception as error:
        log.exception("loading failed")
        connection.send(
            LoadFailed("load_crashed", {"source": spec.entry.source, "error": f"{type(error).__name__}: {error}"})
        )
        return
    seconds = time.monotonic() - started
    log.info("loaded %s (%s) on %s in %.1f s", spec.entry.source, spec.entry.precision, spec.device, seconds)
    speech = _speech_pipeline(spec)
    connection.send(Ready(time.monotonic() - started, hears=speech is not None))
    Host(pipeline, spec.num_crops, connection, speech).run()


def _speech_pipeline(spec: PipelineSpec) -> Any:
    """The speech model, if the spec has one; one that fails to load leaves the vision model serving (voice
    questions are then answered as without a speech model) and says why in the log."""
    if spec.speech is None:
        return None
    try:
        return compile_speech(spec)
    except ModelStoreError as error:
        log.error("the speech model did not load: %s", error)
    except Exception:
        log.exception("the speech model did not load")
    return None


@dataclass
class _Batched:
    handle: Any  # openvino_genai.GenerationHandle
    decoder: Any  # openvino_genai.TextStreamer: turns token ids into text at word boundaries
    question_tokens: int
    ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Image:
    tensor: Any  # ov.Tensor of the pixels as GenAI gets them (engine.images.for_genai)
    tokens: int  # prompt positions it takes


@dataclass
class _ReadingSpeed:
    """Tokens per second at which text pieces are read, as a running average of the pieces themselves."""

    tokens_per_second: float | None = None

    def piece_tokens(self) -> int:
        if self.tokens_per_second is None:
            return FIRST_PIECE_TOKENS
        return max(16, min(1024, int(self.tokens_per_second * PIECE_SECONDS)))

    def record(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        sample = tokens / seconds
        known = self.tokens_per_second
        self.tokens_per_second = sample if known is None else 0.7 * known + 0.3 * sample


class Host:
    def __init__(self, pipeline: Any, num_crops: int, connection: Connection, speech: Any = None) -> None:
        self._pipeline = pipeline
        self._speech = speech  # openvino_genai.WhisperPipeline, or None
        self._num_crops = num_crops
        self._connection = connection
        self._tokenizer = pipeline.get_tokenizer()
        self._tokens = Tokens(self._tokenizer)
        self._send_lock = threading.Lock()
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._cancelled: set[int] = set()  # filled by the reader thread, so a running generation sees it at once
        self._arrived: dict[int, float] = {}  # when each job reached this process (by the reader thread)
        self._waiting: deque[Job] = deque()
        self._batch: dict[int, _Batched] = {}
        self._preparing: OrderedDict[tuple[Hashable, bool], Prepare] = OrderedDict()  # by conversation, and ahead
        self._pieces: dict[int, int] = {}  # pieces read so far, by preparation
        self._images: dict[str, _Image] = {}
        self._sessions = Sessions()
        self._speed = _ReadingSpeed()
        self._stopping = False

    def run(self) -> None:
        threading.Thread(target=self._receive, name="commands", daemon=True).start()
        while True:
            self._take_commands(block=not self._waiting and not self._batch and not self._preparing)
            if self._stopping:
                break
            if self._waiting and not self._waiting[0].batched and not self._batch:
                if (job := self._heard(self._waiting.popleft())) is not None:
                    self._answer_alone(job)
                continue
            while self._waiting and self._waiting[0].batched:
                if (job := self._heard(self._waiting.popleft())) is not None:
                    self._admit(job)
            if self._batch:
                self._step()
            elif self._preparing:
                self._prepare_piece()
        for request_id in list(self._batch):
            self._end_batched(request_id, cancel=True)
        while self._waiting:
            self._send(Done(self._waiting.popleft().request_id))
        for slot in list(self._preparing):
            self._end_preparation(slot)

    def _send(self, reply: Reply) -> None:
        with self._send_lock:  # GenAI may call a streamer from a thread of its own
            self._connection.send(reply)

    def _receive(self) -> None:
        while True:
            try:
                command: Command = self._connection.recv()
            except (EOFError, OSError):  # the bot is gone without saying Shutdown: nobody waits for anything
                log.warning("the bot's process is gone; stopping at once")
                os._exit(0)
            if isinstance(command, Cancel):
                self._cancelled.add(command.request_id)
            elif isinstance(command, Job):
                self._arrived[command.request_id] = time.monotonic()
            self._inbox.put(command)
            if isinstance(command, Shutdown):
                return

    def _take_commands(self, *, block: bool) -> None:
        while True:
            try:
                command = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if isinstance(command, Job | Prepare):
                self._keep_images(command.images, command.forget)
                ahead = isinstance(command, Prepare) and command.ahead
                self._end_preparation((command.key, ahead))  # a newer view of the conversation replaces it
            if isinstance(command, Job):
                self._waiting.append(command)
            elif isinstance(command, Prepare):
                self._preparing[(command.key, command.ahead)] = command
            elif isinstance(command, Drop):
                self._end_preparation((command.key, False))
                self._end_preparation((command.key, True))
                self._sessions.forget(command.key)
            elif isinstance(command, Shutdown):
                self._stopping = True
            else:
                self._forget_cancel(command.request_id)

    def _keep_images(self, images: NewImages, forget: Sequence[str]) -> None:
        import openvino as ov

        for sha in forget:
            self._images.pop(sha, None)
        for sha, pixels in images.items():
            height, width = pixels.shape[:2]
            self._images[sha] = _Image(
                ov.Tensor(for_genai(pixels, self._num_crops)), image_tokens(width, height, self._num_crops)
            )

    def _forget_cancel(self, request_id: int) -> None:
        """A cancelled job that has not started ends here; one that already ended leaves no trace."""
        for job in self._waiting:
            if job.request_id == request_id:
                self._waiting.remove(job)
                self._finish(Done(request_id))
                return
        for slot, preparation in self._preparing.items():
            if preparation.request_id == request_id:
                self._end_preparation(slot)
                return
        if request_id not in self._batch:
            self._cancelled.discard(request_id)

    def _finish(self, done: Done) -> None:
        self._cancelled.discard(done.request_id)
        self._arrived.pop(done.request_id, None)
        self._send(done)

    def _tensors(self, images: Sequence[str]) -> list[Any]:
        return [self._images[sha].tensor for sha in images]

    def _message_tokens(self, message: Message) -> int:
        """What a message adds to the prompt, as the context policy counts it."""
        images = sum(self._images[sha].tokens for sha in message.images if sha in self._images)
        return len(self._tokens.ids(message.text)) + images + MESSAGE_OVERHEAD

    def _streamer(self, request_id: int) -> Callable[[str], Any]:
        """Sends a job's text as it comes; tells GenAI to stop once the job is cancelled (a batched job's
        decoder ignores that: its request is cancelled between steps)."""
        import openvino_genai as genai

        def stream(text: str) -> Any:
            self._send(Text(request_id, text))
            return genai.StreamingStatus.CANCEL if request_id in self._cancelled else genai.StreamingStatus.RUNNING

        return stream

    def _generate(
        self, session: Session, messages: list[dict[str, str]], images: Sequence[str], config: Any, streamer: Any
    ) -> Any:
        session.history.set_messages(messages)
        return self._pipeline.generate([session.history], [self._tensors(images)], [config], streamer)[0]

    def _read(self, session: Session, wanted: Sequence[Message], piece: Piece, settings: GenerationSettings) -> float:
        """One piece: GenAI reads it and writes one token; returns the seconds spent encoding images."""
        config = settings.to_genai()
        config.max_new_tokens = 1
        started = time.monotonic()
        result = self._generate(session, piece.messages, piece.images, config, None)
        if not piece.images:
            self._speed.record(piece.tokens, time.monotonic() - started)
        Sessions.advance(session, wanted, piece)
        return float(result.perf_metrics.get_vision_encoding_duration().mean) / 1000

    # --- work ahead of questions -----------------------------------------------------------------------------

    def _end_preparation(self, slot: tuple[Hashable, bool], error: str | None = None) -> None:
        preparation = self._preparing.pop(slot, None)
        if preparation is not None:
            pieces = self._pieces.pop(preparation.request_id, 0)
            self._finish(Done(preparation.request_id, error=error, pieces=pieces))

    def _prepare_piece(self) -> None:
        # a view after a coming step is read once nothing more pressing is (a photo sent alone, a new answer)
        slot = next((slot for slot in self._preparing if not slot[1]), next(iter(self._preparing)))
        preparation = self._preparing[slot]
        key, ahead = slot
        wanted = conversation(preparation.settings.system_prompt, preparation.past)
        if any(sha not in self._images for message in wanted for sha in message.images):
            self._end_preparation(slot, error="an image of this conversation is no longer held")
            return
        nothing_asked = not any(message.role == "user" for message in wanted)  # GenAI needs a user message
        # read already, or overtaken by a question (the step's question took the view read ahead over)
        read = self._sessions.holds(key, wanted) or (ahead and self._sessions.holds(key, wanted, ahead=True))
        if nothing_asked or read:
            self._end_preparation(slot)
            return
        session = self._sessions.ahead(key, wanted) if ahead else self._sessions.session(key, wanted)
        piece = Sessions.next_piece(session, wanted, self._speed.piece_tokens(), self._count, self._tokens.cut)
        if piece is None:
            session.previous = None
            self._end_preparation(slot)
            return
        try:
            self._read(session, wanted, piece, preparation.settings)
            self._pieces[preparation.request_id] = self._pieces.get(preparation.request_id, 0) + 1
        except Exception as error:
            log.exception("preparing a conversation failed")
            self._sessions.forget(key, ahead=ahead)
            self._end_preparation(slot, error=str(error))

    def _count(self, text: str) -> int:
        return len(self._tokens.ids(text))

    # --- questions ---------------------------------------------------------------------------------------------

    def _heard(self, job: Job) -> Job | None:
        """A question asked aloud, written down: the job with what was heard as its question (after its caption),
        or None when it ended here (no speech model, no words made out, a failure).  Between two steps of a
        batch, a voice message holds the batch for as long as it takes to transcribe (benchmarks/voice.py)."""
        if job.speech is None:
            return job
        if self._speech is None:
            self._finish(Done(job.request_id, error=NO_SPEECH_MODEL))
            return None
        started = time.monotonic()
        try:
            heard, language = self._transcribe(job.speech)
        except Exception as error:
            log.exception("transcribing a voice question failed")
            self._finish(Done(job.request_id, error=str(error)))
            return None
        text = f"{job.question.text}\n{heard}" if job.question.text and heard else heard
        self._send(Heard(job.request_id, heard, text, language, time.monotonic() - started))
        if not heard or job.request_id in self._cancelled:
            self._finish(Done(job.request_id))
            return None
        return replace(job, question=replace(job.question, text=text), speech=None)

    def _transcribe(self, speech: Speech) -> tuple[str, str | None]:
        """What was said, as plain text (engine/prompt_text.py: the conversation's history keeps it so), and the
        language Whisper heard.  The transcript is bounded by the sound's length: Whisper can loop on noise."""
        import numpy as np

        samples = np.frombuffer(speech.samples, dtype="<f4")
        seconds = min(samples.size / SPEECH_SAMPLE_RATE, WHISPER_WINDOW_SECONDS)
        config = self._speech.get_generation_config()
        config.task = "transcribe"
        config.language = speech.language
        config.return_timestamps = False
        config.max_new_tokens = int(TRANSCRIPT_TOKENS_PER_SECOND * seconds) + TRANSCRIPT_SPARE_TOKENS
        result = self._speech.generate(samples.tolist(), config)
        languages = list(getattr(result, "languages", None) or [])
        heard = as_plain_text(_TIMESTAMP.sub("", result.texts[0]).strip())
        return heard, (languages[0] if languages else None)

    def _answer_alone(self, job: Job) -> None:
        while self._pipeline.has_non_finished_requests():  # a cancelled batch request still being let go
            self._pipeline.step()
        request_id = job.request_id
        waited = time.monotonic() - self._arrived.get(request_id, time.monotonic())
        past = conversation(job.settings.system_prompt, job.past)
        wanted = [*past, job.question]
        session = self._sessions.session(job.key, wanted)
        replays, vision_seconds = 0, 0.0
        try:
            while (piece := Sessions.next_piece(session, past, None, self._count, self._tokens.cut)) is not None:
                if request_id in self._cancelled:  # stopped or out of time while the conversation was read again
                    self._finish(Done(request_id, report=Report(replays=replays, vision_seconds=vision_seconds)))
                    return
                vision_seconds += self._read(session, past, piece, job.settings)
                replays += 1
            messages = [message.as_dict() for message in wanted]
            config = job.settings.to_genai()
            result = self._generate(session, messages, job.question.images, config, self._streamer(request_id))
        except Exception as error:
            log.exception("generation failed")
            self._sessions.forget(job.key)
            self._finish(Done(request_id, error=str(error)))
            return
        Sessions.answered(session, wanted)
        metrics = result.perf_metrics
        self._finish(
            Done(
                request_id,
                text=result.texts[0],
                report=Report(
                    input_tokens=int(metrics.get_num_input_tokens()),
                    generated_tokens=int(metrics.get_num_generated_tokens()),
                    question_tokens=self._message_tokens(job.question),
                    replays=replays,
                    vision_seconds=vision_seconds + float(metrics.get_vision_encoding_duration().mean) / 1000,
                    waited_seconds=waited,
                ),
            )
        )

    def _admit(self, job: Job) -> None:
        import openvino_genai as genai

        request_id = job.request_id
        messages, images = tagged_messages(conversation(job.settings.system_prompt, [*job.past, job.question]))
        config = job.settings.to_genai()
        config.apply_chat_template = False
        try:
            prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            handle = self._pipeline.add_request(request_id, prompt, self._tensors(images), config)
        except Exception as error:
            log.exception("could not start a batched generation")
            self._finish(Done(request_id, error=str(error)))
            return
        decoder = genai.TextStreamer(self._tokenizer, self._streamer(request_id))
        self._batch[request_id] = _Batched(handle, decoder, self._message_tokens(job.question))

    def _step(self) -> None:
        import openvino_genai as genai

        try:
            self._pipeline.step()
        except Exception as error:
            log.exception("a batched generation step failed")
            for request_id in list(self._batch):
                del self._batch[request_id]
                self._finish(Done(request_id, error=str(error)))
            return
        for request_id, item in list(self._batch.items()):
            while item.handle.can_read():
                for output in item.handle.read().values():
                    if output.generated_ids:
                        item.ids.extend(output.generated_ids)
                        item.decoder.write(output.generated_ids)
            status = item.handle.get_status()
            if request_id in self._cancelled:
                self._end_batched(request_id, cancel=True)
            elif status == genai.GenerationStatus.IGNORED:
                del self._batch[request_id]
                message = "the conversation does not fit in the KV cache; raise KV_CACHE_GB or start over with /reset"
                self._finish(Done(request_id, error=message))
            elif status != genai.GenerationStatus.RUNNING:
                self._end_batched(request_id, cancel=False)

    def _end_batched(self, request_id: int, *, cancel: bool) -> None:
        item = self._batch.pop(request_id)
        if cancel:
            item.handle.cancel()  # GenAI keeps no metrics for it
        item.decoder.end()
        self._finish(
            Done(
                request_id,
                text=self._tokenizer.decode(item.ids),
                report=Report(
                    input_tokens=0 if cancel else int(item.handle.get_vlm_perf_metrics().get_num_input_tokens()),
                    generated_tokens=len(item.ids),
                    question_tokens=item.question_tokens,
                ),
            )
        )
