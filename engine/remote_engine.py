"""The engine on another machine: a client of a model service that speaks the OpenAI chat-completions protocol
(this project's own, service/, or any OpenAI-compatible server with vision), with the local engine's interface.

Each question is one streamed request naming its conversation (engine/openai_wire.py's header), so the service
sends it where its cache is; the extension's events (place in line, start, how it ended) come where the
server sends them.  Stop closes the stream, which stops the generation on the server.  A service that is down
or cut off before an answer's first word is asked once more; one that goes silent or is cut off after it ends
the answer with what came, as failed, so the bot shows the interrupted note and stores what was said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from engine.conversation import Turn
from engine.engine import EngineStats, Event, Finished, Prepared, Serving
from engine.fair_queue import AlreadyQueued, QueueFull
from engine.generation import GenerationSettings
from engine.openai_wire import CONVERSATION_HEADER, StreamReader, WireError, request_body
from engine.pipeline_protocol import Speech

log = logging.getLogger(__name__)

SILENCE_SECONDS = 60.0  # the service sends a keep-alive every 15 s (service/http_app.py): this long is a dead link
CONNECT_SECONDS = 10.0

_Feed = asyncio.Queue["Event | BaseException | None"]  # a stream's events, then None at its end, or what ended it


class ServiceUnavailable(Exception):
    """The model service could not be reached or did not answer as the protocol says; ``reason`` names how."""

    def __init__(self, reason: str, **data: object) -> None:
        super().__init__(reason, data)
        self.reason = reason
        self.data = data


@dataclass(frozen=True)
class ServedModel:
    """What the service says of its model (``GET /v1/models``), over what this side assumes
    (``RemoteEngine``'s ``assumed``) where it says nothing: servers without the extension give only the id."""

    model_id: str
    num_crops: int
    history_tokens: int
    kv_cache_tokens: int
    details: dict[str, Any] = field(default_factory=dict)  # source, precision, device: as people are shown them
    extensions: bool = False


@dataclass
class _Asking:
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


class RemoteEngine:
    """Questions and reading ahead sent to a model service; the interface of engine.engine.Engine.

    The service may start after the bot (or restart under it): until it has listed its model, this side plans
    with what it ``assumed`` (the configured crops and history budget), and asks again with each question."""

    def __init__(
        self,
        url: str,
        settings: GenerationSettings,
        *,
        namespace: str,
        assumed: ServedModel,
        api_key: str | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(SILENCE_SECONDS, connect=CONNECT_SECONDS)
        self._client = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.url = url
        self.served = assumed
        self.listed = False  # the service has said what it serves
        self.settings = settings
        self._namespace = namespace  # keeps this bot's conversations apart from other clients' of the service
        self._asking: dict[Hashable, _Asking] = {}
        self._errands: set[asyncio.Task[None]] = set()
        self.stats = EngineStats()

    async def describe(self) -> ServedModel:
        """What the service serves, asked of it; raises ServiceUnavailable when it does not say."""
        listing = await _json(self._client, "GET", "/models")
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], dict) or "id" not in data[0]:
            raise ServiceUnavailable("no_model_listed")
        ours = data[0].get("phi3bot")
        assumed = self.served
        if isinstance(ours, dict):
            history = int(ours.get("history_tokens", assumed.history_tokens))
            self.served = ServedModel(
                str(data[0]["id"]),
                int(ours.get("num_crops", assumed.num_crops)),
                history,
                int(ours.get("kv_cache_tokens", history)),
                {k: v for k, v in ours.items() if k not in ("num_crops", "history_tokens", "kv_cache_tokens")},
                extensions=True,
            )
        else:
            self.served = replace(assumed, model_id=str(data[0]["id"]), details={}, extensions=False)
        self.listed = True
        return self.served

    @property
    def history_tokens(self) -> int:
        return self.served.history_tokens

    @property
    def hears(self) -> bool:
        """The OpenAI chat protocol carries no recordings to transcribe: voice questions need the local engine."""
        return False

    @property
    def num_crops(self) -> int:
        return self.served.num_crops

    @property
    def kv_cache_tokens(self) -> int:
        return self.served.kv_cache_tokens

    @property
    def serving(self) -> Serving:
        said = self.served.details
        source = str(said.get("source") or self.served.model_id)
        precision, device = str(said.get("precision") or "unknown"), str(said.get("device") or "unknown")
        return Serving(source, precision, device, bool(said.get("synthetic")), service=self.url)

    def _headers(self, key: Hashable) -> dict[str, str]:
        return {CONVERSATION_HEADER: f"{self._namespace}/{key}"}

    async def ask(
        self,
        key: Hashable,
        past: Sequence[Turn],
        question: Turn,
        *,
        system_prompt: str | None = None,
        seed: int | None = None,
        asker: Hashable | None = None,
        speech: Speech | None = None,
    ) -> AsyncGenerator[Event, None]:
        """As Engine.ask: raises AlreadyQueued / QueueFull before yielding anything.  ``speech`` fails the answer:
        the protocol has no place for a recording (``hears``)."""
        if key in self._asking:
            raise AlreadyQueued
        if speech is not None:
            yield Finished(text="", status="failed", error="the model service hears no recordings")
            return
        asking = self._asking[key] = _Asking()
        started = time.monotonic()
        try:
            if not self.listed:
                with contextlib.suppress(ServiceUnavailable):
                    await self.describe()
            settings = self.settings.for_request(system_prompt, seed)
            asked_by = None if asker is None else str(asker)
            # off the event loop: each photo in view is encoded as PNG (about a quarter of a second for a large one)
            body = await asyncio.to_thread(
                request_body, past, question, settings, model=self.served.model_id, asker=asked_by, stream=True
            )
            for attempt in (1, 2):
                reader = StreamReader()
                events: _Feed = asyncio.Queue()
                reading = asyncio.create_task(self._read(body, key, reader, events))
                failure: BaseException | None = None
                try:
                    while (item := await self._next(events, asking)) is not None:
                        if isinstance(item, AlreadyQueued | QueueFull) and attempt == 1:
                            raise item
                        if isinstance(item, BaseException):
                            failure = item
                            break
                        yield item
                finally:
                    reading.cancel()  # closes the stream: the server stops the generation
                    with contextlib.suppress(asyncio.CancelledError):
                        await reading
                if asking.stopped.is_set():
                    self.stats.cancelled += 1
                    yield Finished(text=reader.text, status="cancelled", seconds=time.monotonic() - started)
                    return
                if failure is None:
                    try:
                        finished = reader.end()
                    except WireError as error:
                        failure = error
                    else:
                        self._count(finished)
                        yield finished
                        return
                if attempt == 1 and not reader.text:
                    log.warning("the model service failed before answering (asked once more): %s", _described(failure))
                    continue
                log.warning("the model service's answer was cut off: %s", _described(failure))
                self.stats.failed += 1
                failed = Finished(text=reader.text, status="failed", error=_described(failure))
                yield replace(failed, seconds=time.monotonic() - started)
                return
        finally:
            del self._asking[key]

    async def _read(self, body: dict[str, Any], key: Hashable, reader: StreamReader, out: _Feed) -> None:
        """The stream's events into ``out``, then None at its end, or the error that ended it."""
        try:
            async with self._client.stream("POST", "/chat/completions", json=body, headers=self._headers(key)) as reply:
                if reply.status_code in (409, 429):
                    out.put_nowait(AlreadyQueued() if reply.status_code == 409 else QueueFull())
                    return
                if reply.status_code != 200:
                    await reply.aread()
                    out.put_nowait(ServiceUnavailable("status", status=reply.status_code, body=reply.text[:500]))
                    return
                async for line in reply.aiter_lines():
                    if line.startswith("data:"):
                        for event in reader.read(line[5:].strip()):
                            out.put_nowait(event)
            out.put_nowait(None)
        except (httpx.HTTPError, WireError) as error:
            out.put_nowait(error)

    async def _next(self, events: _Feed, asking: _Asking) -> Event | BaseException | None:
        """The next event, or None once the answer is stopped or over."""
        if asking.stopped.is_set():
            return None
        getting = asyncio.ensure_future(events.get())
        stopping = asyncio.ensure_future(asking.stopped.wait())
        try:
            done, _ = await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            getting.cancel()
            stopping.cancel()
        return getting.result() if getting in done and not asking.stopped.is_set() else None

    def _count(self, finished: Finished) -> None:
        if finished.status == "complete":
            self.stats.answered += 1
        elif finished.status == "timeout":
            self.stats.timed_out += 1
        elif finished.status == "failed":
            self.stats.failed += 1
        else:
            self.stats.cancelled += 1
        self.stats.generated_tokens += finished.report.generated_tokens
        self.stats.busy_seconds += finished.seconds

    def cancel(self, conversation: Hashable, *, grace: float | None = None) -> bool:
        """Stop the answer for ``conversation``: its stream is closed, which stops it on the server."""
        asking = self._asking.get(conversation)
        if asking is None:
            return False
        asking.stopped.set()
        return True

    def cancel_all(self) -> int:
        for asking in self._asking.values():
            asking.stopped.set()
        return len(self._asking)

    async def prepare(
        self, key: Hashable, past: Sequence[Turn], *, system_prompt: str | None = None, ahead: bool = False
    ) -> Prepared:
        """Have the service read ``past`` ahead of the next question, where it offers that (the extension);
        ``ahead`` as for the local engine's ``prepare``."""
        if not self.served.extensions:
            return Prepared(0, 0.0, "not offered by the service")
        settings = self.settings.for_request(system_prompt, None)
        body = await asyncio.to_thread(
            request_body, past, None, settings, model=self.served.model_id, asker=None, stream=False
        )
        try:
            answer = await _json(
                self._client,
                "POST",
                "/phi3bot/prepare",
                json=body,
                headers=self._headers(key),
                params={"ahead": "true"} if ahead else None,
            )
        except ServiceUnavailable as error:
            return Prepared(0, 0.0, _described(error))
        if not isinstance(answer, dict):
            return Prepared(0, 0.0, "the service answered a preparation with something else")
        error = answer.get("error")
        return Prepared(int(answer.get("pieces") or 0), float(answer.get("seconds") or 0.0), error and str(error))

    def forget(self, key: Hashable) -> None:
        """A conversation was reset: the service drops what it kept for it (sent in the background)."""
        if self.served.extensions:
            errand = asyncio.get_running_loop().create_task(self._forget(key))
            self._errands.add(errand)
            errand.add_done_callback(self._errands.discard)

    async def _forget(self, key: Hashable) -> None:
        try:
            await self._client.post("/phi3bot/forget", headers=self._headers(key))
        except httpx.HTTPError as error:
            log.warning("the model service was not told of a reset: %s", _described(error))

    async def loaded(self) -> None:
        """Nothing loads here: the service loads its model (and says so when asked)."""

    async def calibrate(self) -> bool:
        """The service measures its own speed: nothing to do here."""
        return False

    @property
    def loading(self) -> bool:
        return False

    async def aclose(self) -> None:
        """Running answers stop and keep their text; the connections close."""
        self.cancel_all()
        if self._errands:
            await asyncio.wait(self._errands, timeout=5)
        await self._client.aclose()


async def _json(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        reply = await client.request(method, path, **kwargs)
    except httpx.HTTPError as error:
        raise ServiceUnavailable("unreachable", error=_described(error)) from error
    if reply.status_code != 200:
        raise ServiceUnavailable("status", status=reply.status_code, body=reply.text[:500])
    try:
        return reply.json()
    except ValueError as error:
        raise ServiceUnavailable("not_json") from error


def _described(error: BaseException | None) -> str:
    """An error as a line for the log and a failed answer: its kind and message, never a request's headers."""
    if isinstance(error, ServiceUnavailable | WireError):
        return f"{error.reason} {error.data}" if error.data else error.reason
    return f"{type(error).__name__}: {error}" if error is not None else "the stream ended early"
