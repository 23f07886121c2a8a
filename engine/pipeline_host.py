"""The model's own process: compiles the pipeline and answers the jobs the engine sends over a pipe.

Why a process of its own: GenAI's batching calls (``add_request``, ``step``) keep Python's GIL for seconds
(benchmarks/gil_hold.py: up to 12 s), which would freeze Telegram for every chat if they ran in the bot's
process; here they freeze nothing but this loop.  An OpenVINO crash or an out-of-memory kill of the model
also leaves the bot up, and a swapped-out model gives all its memory back when its process exits.

A job that runs alone goes through GenAI's chat state (``Sessions``), which keeps the conversation's encoded
photos and KV blocks, so a follow-up pays only for its new tokens.  Batched jobs enter through
``add_request`` as one templated prompt each (their earlier photos are encoded again; prefix caching spares
the language model's part) and are stepped together, one token each per step; a cancel is seen between
steps.  The engine never mixes the two: a lone job is sent only when no batch runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from engine.conversation import Sessions, tagged_messages
from engine.images import PreparedImage, for_genai
from engine.pipeline_protocol import Cancel, Command, Done, Job, LoadFailed, Ready, Reply, Shutdown, Text
from model_store.errors import ModelStoreError
from model_store.loader import PipelineSpec, compile_pipeline

log = logging.getLogger(__name__)


def serve(spec: PipelineSpec, connection: Connection, log_level: int) -> None:
    """The child's entry point: load, say Ready (or why not), then answer jobs until told to stop."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s model: %(message)s")
    started = time.monotonic()
    try:
        pipeline = compile_pipeline(spec)
    except ModelStoreError as error:
        connection.send(LoadFailed(str(error)))
        return
    except Exception as error:
        log.exception("loading failed")
        connection.send(LoadFailed(f"Loading {spec.entry.source} failed: {type(error).__name__}: {error}"))
        return
    seconds = time.monotonic() - started
    log.info("loaded %s (%s) on %s in %.1f s", spec.entry.source, spec.entry.precision, spec.device, seconds)
    connection.send(Ready(seconds))
    Host(pipeline, spec.num_crops, connection).run()


@dataclass
class _Batched:
    handle: Any  # openvino_genai.GenerationHandle
    decoder: Any  # openvino_genai.TextStreamer: turns token ids into text at word boundaries
    ids: list[int] = field(default_factory=list)


class Host:
    def __init__(self, pipeline: Any, num_crops: int, connection: Connection) -> None:
        self._pipeline = pipeline
        self._num_crops = num_crops
        self._connection = connection
        self._tokenizer = pipeline.get_tokenizer()
        self._send_lock = threading.Lock()
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._cancelled: set[int] = set()  # filled by the reader thread, so a running generation sees it at once
        self._waiting: deque[Job] = deque()
        self._batch: dict[int, _Batched] = {}
        self._sessions = Sessions()
        self._stopping = False

    def run(self) -> None:
        threading.Thread(target=self._receive, name="commands", daemon=True).start()
        while True:
            self._take_commands(block=not self._waiting and not self._batch)
            if self._stopping:
                break
            if self._waiting and not self._waiting[0].batched and not self._batch:
                self._answer_alone(self._waiting.popleft())
                continue
            while self._waiting and self._waiting[0].batched:
                self._admit(self._waiting.popleft())
            if self._batch:
                self._step()
        for request_id in list(self._batch):
            self._end_batched(request_id, cancel=True)
        while self._waiting:
            self._send(Done(self._waiting.popleft().request_id))

    def _send(self, reply: Reply) -> None:
        with self._send_lock:  # GenAI may call a streamer from a thread of its own
            self._connection.send(reply)

    def _receive(self) -> None:
        while True:
            try:
                command: Command = self._connection.recv()
            except (EOFError, OSError):  # the bot is gone: nobody to answer
                command = Shutdown()
            if isinstance(command, Cancel):
                self._cancelled.add(command.request_id)
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
            if isinstance(command, Job):
                self._waiting.append(command)
            elif isinstance(command, Shutdown):
                self._stopping = True
            else:
                self._forget_cancel(command.request_id)

    def _forget_cancel(self, request_id: int) -> None:
        """A cancelled job that has not started ends here; one that already ended leaves no trace."""
        for job in self._waiting:
            if job.request_id == request_id:
                self._waiting.remove(job)
                self._finish(Done(request_id))
                return
        if request_id not in self._batch:
            self._cancelled.discard(request_id)

    def _finish(self, done: Done) -> None:
        self._cancelled.discard(done.request_id)
        self._send(done)

    def _tensors(self, images: Sequence[PreparedImage]) -> list[Any]:
        import openvino as ov

        return [ov.Tensor(for_genai(image.pixels, self._num_crops)) for image in images]

    def _streamer(self, request_id: int) -> Callable[[str], Any]:
        """Sends a job's text as it comes; tells GenAI to stop once the job is cancelled (a batched job's
        decoder ignores that: its request is cancelled between steps)."""
        import openvino_genai as genai

        def stream(text: str) -> Any:
            self._send(Text(request_id, text))
            return genai.StreamingStatus.CANCEL if request_id in self._cancelled else genai.StreamingStatus.RUNNING

        return stream

    def _answer_alone(self, job: Job) -> None:
        while self._pipeline.has_non_finished_requests():  # a cancelled batch request still being let go
            self._pipeline.step()
        request_id = job.request_id

        def generate(history: Any, images: Any, config: Any, streamer: Any) -> Any:
            return self._pipeline.generate([history], [self._tensors(images)], [config], streamer)[0]

        prime = job.settings.to_genai()
        prime.max_new_tokens = 1
        replays = self._sessions.replays
        try:
            result = self._sessions.run(
                generate,
                job.key,
                job.settings.system_prompt,
                job.past,
                job.question,
                job.settings.to_genai(),
                self._streamer(request_id),
                prime,
            )
        except Exception as error:
            log.exception("generation failed")
            self._finish(Done(request_id, error=str(error)))
            return
        metrics = result.perf_metrics
        self._finish(
            Done(
                request_id,
                text=result.texts[0],
                input_tokens=int(metrics.get_num_input_tokens()),
                generated_tokens=int(metrics.get_num_generated_tokens()),
                replays=self._sessions.replays - replays,
            )
        )

    def _admit(self, job: Job) -> None:
        import openvino_genai as genai

        request_id = job.request_id
        messages, images = tagged_messages(job.settings.system_prompt, [*job.past, job.question])
        config = job.settings.to_genai()
        config.apply_chat_template = False
        try:
            prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            handle = self._pipeline.add_request(request_id, prompt, self._tensors(images), config)
        except Exception as error:
            log.exception("could not start a batched generation")
            self._finish(Done(request_id, error=str(error)))
            return
        self._batch[request_id] = _Batched(handle, genai.TextStreamer(self._tokenizer, self._streamer(request_id)))

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
                input_tokens=0 if cancel else int(item.handle.get_vlm_perf_metrics().get_num_input_tokens()),
                generated_tokens=len(item.ids),
            )
        )
