"""The model service's HTTP side: the OpenAI chat-completions protocol (engine/openai_wire.py) over an engine.

``POST /v1/chat/completions`` (streamed as server-sent events or whole), ``GET /v1/models`` and ``GET /health``
are the protocol's; ``POST /v1/phi3bot/prepare`` (read a conversation ahead of its next question;
``?ahead=true``: the view after its coming step) and ``POST /v1/phi3bot/forget`` (a conversation was reset) are
this project's extensions.  The engine behind it is anything with the local engine's ``ask``, ``prepare`` and
``forget``: the engine itself, or a handle to the replica that holds the conversation (service/deployment.py).

A client that closes the stream stops its answer, as Stop does in the bot: Starlette cancels the response's
generator when the client goes, and closing the engine's events stops the generation.

Nothing a client sends may cost the service more than it costs the client: a few requests at a time have their
bodies read (each up to ``max_body_bytes``, within BODY_SECONDS, so a slow sender gives its turn up) and parsed,
a request's images are decoded off the event loop within the bot's own image limits and up to
MAX_DECODED_BYTES in all, and decoded images are cached by content so a conversation's photos, sent again with
every follow-up, are decoded once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import LRUCache
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from bot.media.decoding import ImageLimits, ImageRejected, prepare_image
from engine.conversation import Turn
from engine.engine import Chunk, Event, Finished, Prepared, Started, Waiting
from engine.fair_queue import AlreadyQueued, QueueFull
from engine.generation import GenerationSettings
from engine.images import PreparedImage
from engine.openai_wire import (
    CONVERSATION_HEADER,
    DONE,
    WireError,
    WireMessage,
    WireRequest,
    chunk,
    extension,
    finish_reason,
    read_request,
    sse,
    usage,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024  # a long conversation with a dozen photos as PNG fits with room to spare
MAX_IMAGES = 64  # per request
MAX_DECODED_BYTES = 256 * 1024 * 1024  # a request's images decoded: eleven of 2688 px a side, the most the bot allows
DECODED_CACHE_BYTES = 512 * 1024 * 1024
PARSING_AT_ONCE = 2  # requests whose bodies are read, parsed and decoded at once: the rest wait their turn
BODY_SECONDS = 60.0  # to send a whole body once its turn came
KEEP_ALIVE_SECONDS = 15.0  # a comment line this often while nothing else is sent: clients tell a wait from a dead link
KEEP_ALIVE = b": keep-alive\n\n"


class Answerer(Protocol):
    """What the HTTP side needs of an engine."""

    def ask(
        self,
        key: Hashable,
        past: Sequence[Turn],
        question: Turn,
        *,
        settings: GenerationSettings | None = None,
        asker: Hashable | None = None,
    ) -> AsyncIterator[Event]: ...

    async def prepare(
        self, key: Hashable, past: Sequence[Turn], *, system_prompt: str | None = None, ahead: bool = False
    ) -> Prepared: ...

    def forget(self, key: Hashable) -> None: ...


@dataclass(frozen=True)
class Served:
    """What the service says of its model: its name in the protocol and the figures a client plans with."""

    model_id: str
    created: int
    defaults: GenerationSettings
    num_crops: int
    history_tokens: int
    details: dict[str, Any]  # source, precision, revision, device: shown to people by the bot's /model
    kv_cache_tokens: int | None = None  # what a client may read ahead for its conversations in all

    def listing(self) -> dict[str, Any]:
        extra = {"num_crops": self.num_crops, "history_tokens": self.history_tokens, **self.details}
        if self.kv_cache_tokens is not None:
            extra["kv_cache_tokens"] = self.kv_cache_tokens
        extra["max_tokens"] = self.defaults.max_new_tokens
        listing = {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "phi3bot"}
        return {**listing, "phi3bot": extra}


def _error(status: int, kind: str, message: str, data: dict[str, object] | None = None) -> JSONResponse:
    """An error in the shape OpenAI's clients read (``error.message``, ``error.type``), the reason's data beside."""
    error = {"message": message, "type": kind, "code": kind, **(data or {})}
    return JSONResponse({"error": error}, status_code=status)


class _Images:
    """Decoded images by content hash, bounded in bytes: every follow-up sends the conversation's photos again."""

    def __init__(self, limits: ImageLimits) -> None:
        self._limits = limits
        self._decoded: LRUCache[str, PreparedImage] = LRUCache(DECODED_CACHE_BYTES, getsizeof=_image_bytes)

    async def turns(self, messages: Sequence[WireMessage]) -> list[Turn]:
        """Decoded one by one, so a request past MAX_DECODED_BYTES holds at most one image more."""
        turns, decoded = [], 0
        for message in messages:
            images = []
            for part in message.images:
                image = await self._image(part.data)
                decoded += _image_bytes(image)
                if decoded > MAX_DECODED_BYTES:
                    raise WireError("images_too_large", megabytes=MAX_DECODED_BYTES // (1024 * 1024))
                images.append(image)
            turns.append(Turn(message.role, message.text, tuple(images)))  # type: ignore[arg-type]
        return turns

    async def _image(self, data: bytes) -> PreparedImage:
        sha = await asyncio.to_thread(_content_hash, data)  # up to MAX_BODY_BYTES: not on the event loop
        if (known := self._decoded.get(sha)) is not None:
            return known
        image = await asyncio.to_thread(prepare_image, data, self._limits)
        self._decoded[sha] = image
        return image


def _content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _image_bytes(image: PreparedImage) -> int:
    return int(image.pixels.nbytes)


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, read no further than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise WireError("body_too_large", megabytes=limit // (1024 * 1024))
    received = bytearray()
    async for part in request.stream():
        received += part
        if len(received) > limit:
            raise WireError("body_too_large", megabytes=limit // (1024 * 1024))
    return bytes(received)


def _read(received: bytes, defaults: GenerationSettings) -> WireRequest:
    try:
        body = json.loads(received)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WireError("body_not_json") from error
    return read_request(body, defaults)


def create_app(
    engine: Answerer,
    served: Served,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    image_limits: ImageLimits | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """``api_key``: every request but the health check must carry it as a bearer token (OpenAI's clients send their
    key so); None: anyone who reaches the port may ask."""
    app = FastAPI(title="phi3bot model service", docs_url=None, redoc_url=None)
    images = _Images(image_limits or ImageLimits())
    parsing = asyncio.Semaphore(PARSING_AT_ONCE)

    if api_key is not None:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def authorised(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            given = request.headers.get("authorization", "").encode()
            if request.url.path != "/health" and not hmac.compare_digest(given, expected):
                return _error(401, "invalid_api_key", "a valid API key is needed (Authorization: Bearer ...)")
            return await call_next(request)

    async def parsed(request: Request) -> tuple[WireRequest, list[Turn]]:
        """A body waits in its connection until its turn, so waiting costs no memory here."""
        async with parsing:
            try:
                received = await asyncio.wait_for(_body(request, max_body_bytes), BODY_SECONDS)
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
                raise WireError("body_too_slow", seconds=BODY_SECONDS) from None
            wire = await asyncio.to_thread(_read, received, served.defaults)  # tens of MB of JSON and base64
            del received
            if sum(len(message.images) for message in wire.messages) > MAX_IMAGES:
                raise WireError("too_many_images", most=MAX_IMAGES)
            return wire, await images.turns(wire.messages)

    @app.exception_handler(WireError)
    async def wire_error(_: Request, error: WireError) -> JSONResponse:
        status = {"body_too_large": 413, "images_too_large": 413, "body_too_slow": 408}.get(error.reason, 400)
        return _error(status, error.reason, f"the request does not follow the protocol: {error.reason}", error.data)

    @app.exception_handler(ImageRejected)
    async def image_rejected(_: Request, error: ImageRejected) -> JSONResponse:
        message = f"an image cannot be read: {error.reason}"
        return _error(400, "image_rejected", message, {"reason": error.reason, **error.data})

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The service answers; its model's process is the engine's to restart (Ray's, a replica's)."""
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [served.listing()]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Response:
        wire, turns = await parsed(request)
        if not turns or turns[-1].role != "user":
            raise WireError("last_message_not_user")
        key = request.headers.get(CONVERSATION_HEADER) or f"anonymous-{uuid.uuid4().hex}"
        events = engine.ask(key, turns[:-1], turns[-1], settings=wire.settings, asker=wire.user)
        try:
            first = await anext(aiter(events))
        except AlreadyQueued:
            return _error(409, "conversation_busy", "this conversation already has a question being answered")
        except QueueFull:
            return _error(429, "queue_full", "too many questions are waiting; try again shortly")
        completion = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if wire.stream:
            stream = _stream(first, events, completion, created, served.model_id, wire)
            return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        finished = await _last(first, events)
        return JSONResponse(_whole(finished, completion, created, served.model_id, wire))

    @app.post("/v1/phi3bot/prepare")
    async def prepare(request: Request) -> dict[str, Any]:
        wire, turns = await parsed(request)
        key = request.headers.get(CONVERSATION_HEADER)
        if not key:
            raise WireError("no_conversation")
        ahead = request.query_params.get("ahead") == "true"  # the view after the conversation's coming step
        prepared = await engine.prepare(key, turns, system_prompt=wire.system_prompt, ahead=ahead)
        return {"pieces": prepared.pieces, "seconds": prepared.seconds, "error": prepared.error}

    @app.post("/v1/phi3bot/forget")
    async def forget(request: Request) -> Response:
        key = request.headers.get(CONVERSATION_HEADER)
        if not key:
            raise WireError("no_conversation")
        engine.forget(key)
        return Response(status_code=204)

    return app


async def _last(first: Event, events: AsyncIterator[Event]) -> Finished:
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        event = first
        while not isinstance(event, Finished):
            event = await anext(events)
        return event


def _whole(finished: Finished, completion: str, created: int, model: str, wire: WireRequest) -> dict[str, Any]:
    return {
        "id": completion,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": finished.text},
                "finish_reason": finish_reason(finished, wire.settings.max_new_tokens),
            }
        ],
        "usage": usage(finished),
        **extension(finished),
    }


async def _stream(
    first: Event, events: AsyncIterator[Event], completion: str, created: int, model: str, wire: WireRequest
) -> AsyncIterator[bytes]:
    """The events as chunks, and a keep-alive comment while none comes.

    Each next event is awaited in a task of its own: when the client goes away, Starlette cancels this
    generator, and the task, cancelled in turn, lets the engine stop the answer and wait for its process to
    confirm it (the slot stays taken until then) without that wait being cancelled too."""

    def chunk_of(**fields: Any) -> bytes:
        return sse(chunk(completion, created, model, **fields))

    yield chunk_of(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    event: Event | None = first
    upcoming: asyncio.Task[Event | None] | None = None
    try:
        while event is not None:
            if isinstance(event, Waiting | Started):
                yield chunk_of(**extension(event))
            elif isinstance(event, Chunk):
                yield chunk_of(choices=[{"index": 0, "delta": {"content": event.text}, "finish_reason": None}])
            else:
                reason = finish_reason(event, wire.settings.max_new_tokens)
                yield chunk_of(choices=[{"index": 0, "delta": {}, "finish_reason": reason}], **extension(event))
                if wire.include_usage:
                    yield chunk_of(usage=usage(event))
                break
            upcoming = asyncio.ensure_future(anext(events, None))
            while not (await asyncio.wait({upcoming}, timeout=KEEP_ALIVE_SECONDS))[0]:
                yield KEEP_ALIVE
            event = upcoming.result()
    finally:
        if upcoming is not None and not upcoming.done():
            upcoming.cancel()
            _stopping.add(upcoming)
            upcoming.add_done_callback(_stopping.discard)
        else:
            _stopping.add(closing := asyncio.ensure_future(_close(events)))
            closing.add_done_callback(_stopping.discard)
    yield sse(DONE)


_stopping: set[asyncio.Future[Any]] = set()  # answers stopping after their client went: held until they have


async def _close(events: AsyncIterator[Event]) -> None:
    await events.aclose()  # type: ignore[attr-defined]
