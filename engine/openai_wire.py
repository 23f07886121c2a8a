"""The engine's questions and events in the OpenAI chat-completions protocol, both ways: what the remote engine
(engine/remote_engine.py) sends and reads, and what the model service (service/) reads and sends.

Every OpenAI-compatible server with vision takes a conversation as ``messages`` whose user parts are ``text``
and ``image_url`` data URLs, and streams ``chat.completion.chunk`` objects as server-sent events ending in
``data: [DONE]`` (with ``stream_options.include_usage``, a last chunk with ``usage`` and no choices).  What
the protocol has no place for travels in one extension field, ``phi3bot``, of chunks with no choices, which other
clients skip as they skip the usage chunk: the place in line and its estimate (``waiting``), the start
(``started``) and how the answer ended with what the model's process measured (``finished``).  A server without
them still gives a whole answer: the remote engine then knows only the text, the usage and the finish reason.

A conversation is named by a request header (``CONVERSATION_HEADER``), so that the service sends it to the
replica that holds its cache and the engine there keeps it as one conversation; ``user`` (OpenAI's field for
the end user) names who asks, for the fair queue.

Images travel as lossless PNG, so the service sees exactly the pixels the local engine would.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from engine.conversation import Turn
from engine.engine import Chunk, Event, Finished, Started, Waiting
from engine.generation import GenerationSettings, Status
from engine.pipeline_protocol import Report

CONVERSATION_HEADER = "x-conversation-id"
EXTENSION = "phi3bot"
DONE = "[DONE]"
PNG_DATA_URL = "data:image/png;base64,"

# How an answer's end is told to clients that know only the protocol's finish reasons.
FINISH_REASONS: dict[Status, str] = {"complete": "stop", "cancelled": "stop", "timeout": "length", "failed": "error"}


class WireError(ValueError):
    """A request or a streamed chunk that does not follow the protocol; ``reason`` names what is wrong."""

    def __init__(self, reason: str, **data: object) -> None:
        super().__init__(reason, data)
        self.reason = reason
        self.data = data


def png_data_url(pixels: np.ndarray) -> str:
    """An image as a PNG data URL; compression level 1, because the PNG lives for one request on a fast link."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    return PNG_DATA_URL + base64.b64encode(buffer.getvalue()).decode("ascii")


def data_url_bytes(url: str) -> bytes:
    """The bytes of a base64 data URL (any image type: decoding them is the service's)."""
    head, comma, body = url.partition(",")
    if not comma or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise WireError("image_not_data_url")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as error:
        raise WireError("image_not_base64") from error


def message(turn: Turn) -> dict[str, Any]:
    """One turn as an OpenAI message: plain text, or text and image parts when it brought images."""
    if not turn.images:
        return {"role": turn.role, "content": turn.text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": turn.text}]
    parts += [{"type": "image_url", "image_url": {"url": png_data_url(image.pixels)}} for image in turn.images]
    return {"role": turn.role, "content": parts}


def request_body(
    past: Sequence[Turn],
    question: Turn | None,
    settings: GenerationSettings,
    *,
    model: str,
    asker: str | None,
    stream: bool,
) -> dict[str, Any]:
    """A chat-completions request for ``question`` after ``past``, or (``question`` None) for reading ``past``
    ahead of the next question; ``settings.system_prompt`` comes first, as the local engine puts it.  ``model``:
    as the server names it (vLLM and OpenVINO Model Server refuse a request for a model they do not serve)."""
    turns = [*past, question] if question is not None else list(past)
    messages = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    messages += [message(turn) for turn in turns]
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "repetition_penalty": settings.repetition_penalty,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if settings.seed is not None:
        body["seed"] = settings.seed
    if asker is not None:
        body["user"] = asker
    return body


@dataclass(frozen=True)
class ImagePart:
    """An image of a request, as sent; the service decodes it."""

    data: bytes


@dataclass(frozen=True)
class WireMessage:
    role: str
    text: str
    images: tuple[ImagePart, ...] = ()


@dataclass(frozen=True)
class WireRequest:
    """A chat-completions request as the service reads it: the system prompt apart, the conversation's messages,
    and the generation settings over the service's own (``defaults``)."""

    system_prompt: str
    messages: tuple[WireMessage, ...]
    settings: GenerationSettings
    stream: bool
    include_usage: bool
    user: str | None


def _content(value: object) -> tuple[str, tuple[ImagePart, ...]]:
    if isinstance(value, str):
        return value, ()
    if not isinstance(value, list):
        raise WireError("content_not_text_or_parts")
    texts: list[str] = []
    images: list[ImagePart] = []
    for part in value:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict | str):
            url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
            if not isinstance(url, str):
                raise WireError("image_url_not_text")
            images.append(ImagePart(data_url_bytes(url)))
        else:
            raise WireError("unknown_content_part", part=str(kind))
    return "\n".join(texts), tuple(images)


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise WireError("bad_parameter", name=name, low=low, high=high)
    return float(value)


def read_request(body: object, defaults: GenerationSettings) -> WireRequest:
    """A request's body as the service reads it; raises WireError naming what does not follow the protocol."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise WireError("no_messages")
    system: list[str] = []
    messages: list[WireMessage] = []
    for item in body["messages"]:
        role = item.get("role") if isinstance(item, dict) else None
        if role not in ("system", "developer", "user", "assistant"):
            raise WireError("unknown_role", role=str(role))
        text, images = _content(item.get("content"))
        if role in ("system", "developer"):
            if messages or images:
                raise WireError("system_not_first")
            system.append(text)
        else:
            if images and role != "user":
                raise WireError("images_only_from_user")
            messages.append(WireMessage(role, text, images))
    max_tokens = _number(
        body,
        "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens",
        defaults.max_new_tokens,
        1,
        1 << 20,
    )
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise WireError("bad_parameter", name="seed")
    user = body.get("user")
    options = body.get("stream_options")
    settings = replace(
        defaults,  # what a request cannot say (a time limit, ignore_eos for benchmarks) is the service's
        max_new_tokens=min(int(max_tokens), defaults.max_new_tokens),  # the service's bound holds for everyone
        temperature=_number(body, "temperature", defaults.temperature, 0.0, 2.0),
        top_p=_number(body, "top_p", defaults.top_p, 0.0, 1.0),
        repetition_penalty=_number(body, "repetition_penalty", defaults.repetition_penalty, 0.5, 2.0),
        system_prompt="\n".join(system),
        seed=seed,
    )
    return WireRequest(
        system_prompt="\n".join(system),
        messages=tuple(messages),
        settings=settings,
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        user=user if isinstance(user, str) else None,
    )


def chunk(completion_id: str, created: int, model: str, **fields: Any) -> dict[str, Any]:
    """A ``chat.completion.chunk`` with ``fields`` (``choices`` empty unless given)."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": fields.pop("choices", []),
        **fields,
    }


def extension(event: Waiting | Started | Finished) -> dict[str, Any]:
    """The extension field for an event the protocol has no place for."""
    if isinstance(event, Waiting):
        return {EXTENSION: {"waiting": {"position": event.position, "seconds": event.seconds}}}
    if isinstance(event, Started):
        return {EXTENSION: {"started": {"seconds": event.seconds, "images": event.images}}}
    return {
        EXTENSION: {
            "finished": {
                "status": event.status,
                "error": event.error,
                "report": asdict(event.report),
                "ttft_seconds": event.ttft_seconds,
                "seconds": event.seconds,
                "tokens_per_second": event.tokens_per_second,
            }
        }
    }


def finish_reason(finished: Finished, max_tokens: int) -> str:
    if finished.status == "complete" and finished.report.generated_tokens >= max_tokens:
        return "length"
    return FINISH_REASONS[finished.status]


def usage(finished: Finished) -> dict[str, int]:
    report = finished.report
    return {
        "prompt_tokens": report.input_tokens,
        "completion_tokens": report.generated_tokens,
        "total_tokens": report.input_tokens + report.generated_tokens,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


@dataclass
class StreamReader:
    """Reads a streamed completion's chunks into engine events: text as it comes, the extension's events, and
    at the end one Finished, from the extension where the server sent it, else from the text, the usage and the
    finish reason."""

    text: str = ""
    finish: str | None = None
    usage: dict[str, Any] | None = None
    finished: Finished | None = None

    def read(self, data: str) -> list[Event]:
        """The events of one ``data:`` line's payload (``[DONE]`` gives none)."""
        if data.strip() == DONE:
            return []
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as error:
            raise WireError("chunk_not_json") from error
        if not isinstance(payload, dict):
            raise WireError("chunk_not_object")
        if isinstance(payload.get("error"), dict):
            raise WireError("server_error", message=str(payload["error"].get("message", "")))
        events: list[Event] = []
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.text += content
                events.append(Chunk(content))
            if choice.get("finish_reason"):
                self.finish = str(choice["finish_reason"])
        if isinstance(payload.get("usage"), dict):
            self.usage = payload["usage"]
        ours = payload.get(EXTENSION)
        if isinstance(ours, dict):
            events += self._extension(ours)
        return events

    def _extension(self, ours: dict[str, Any]) -> list[Event]:
        if isinstance(waiting := ours.get("waiting"), dict):
            return [Waiting(int(waiting["position"]), _seconds(waiting.get("seconds")))]
        if isinstance(started := ours.get("started"), dict):
            return [Started(_seconds(started.get("seconds")), int(started.get("images", 0)))]
        if isinstance(finished := ours.get("finished"), dict):
            report = finished.get("report") or {}
            self.finished = Finished(
                text=self.text,
                status=finished["status"],
                error=finished.get("error"),
                report=Report(**{k: v for k, v in report.items() if k in Report.__dataclass_fields__}),
                ttft_seconds=_seconds(finished.get("ttft_seconds")),
                seconds=float(finished.get("seconds") or 0.0),
                tokens_per_second=_seconds(finished.get("tokens_per_second")),
            )
        return []

    def end(self) -> Finished:
        """How the answer ended, once the stream is over."""
        if self.finished is not None:
            return self.finished
        if self.finish is None:
            raise WireError("stream_ended_early")
        counted = self.usage or {}
        report = Report(
            input_tokens=int(counted.get("prompt_tokens") or 0),
            generated_tokens=int(counted.get("completion_tokens") or 0),
        )
        status: Status = "failed" if self.finish == "error" else "complete"
        return Finished(text=self.text, status=status, report=report)


def _seconds(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
