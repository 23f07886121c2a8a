"""The remote engine against other servers of the OpenAI chat-completions protocol, replayed: no third-party
server with vision can be installed here (README, "Beyond one machine"), so a stand-in sends the server-sent
events as vLLM and OpenVINO Model Server document them, and fails the ways a server or a link fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from devkit.uvicorn_server import serving
from engine.conversation import Turn
from engine.engine import Chunk, Event, Finished
from engine.fair_queue import QueueFull
from engine.generation import GenerationSettings
from engine.remote_engine import RemoteEngine, ServedModel

SETTINGS = GenerationSettings(max_new_tokens=64, system_prompt="Be brief.")
SERVED = "phi-3.5-v"  # the model the stand-in serves, as the bot's MODEL names it where a server lists none
ASSUMED = ServedModel(SERVED, num_crops=4, history_tokens=3000, kv_cache_tokens=3000)


def vllm_chunks(words: list[str], finish: str = "stop") -> list[str]:
    """vLLM's OpenAI-compatible server: a role chunk, content deltas, the finish reason with ``stop_reason``, the
    usage chunk (``stream_options.include_usage``), ``[DONE]``."""
    head = {"id": "chatcmpl-9f3", "object": "chat.completion.chunk", "created": 1764720000, "model": SERVED}

    def choice(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        extra = {"stop_reason": None} if reason else {}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason, **extra}

    lines = [{**head, "choices": [choice({"role": "assistant", "content": ""})]}]
    lines += [{**head, "choices": [choice({"content": word})]} for word in words]
    lines.append({**head, "choices": [choice({"content": ""}, finish)]})
    usage = {"prompt_tokens": 812, "total_tokens": 812 + len(words), "completion_tokens": len(words)}
    lines.append({**head, "choices": [], "usage": usage})
    return [json.dumps(line) for line in lines] + ["[DONE]"]


def ovms_chunks(words: list[str]) -> list[str]:
    """OpenVINO Model Server's ``/v3/chat/completions``: no role chunk, keys in its own order, usage last."""
    lines: list[dict[str, Any]] = [
        {
            "choices": [{"delta": {"content": word}, "finish_reason": None, "index": 0, "logprobs": None}],
            "created": 1764720000,
            "model": SERVED,
            "object": "chat.completion.chunk",
        }
        for word in words
    ]
    lines.append(
        {
            "choices": [{"delta": {}, "finish_reason": "stop", "index": 0, "logprobs": None}],
            "created": 1764720000,
            "model": SERVED,
            "object": "chat.completion.chunk",
        }
    )
    lines.append(
        {
            "choices": [],
            "created": 1764720000,
            "model": SERVED,
            "object": "chat.completion.chunk",
            "usage": {"prompt_tokens": 790, "completion_tokens": len(words), "total_tokens": 790 + len(words)},
        }
    )
    return [json.dumps(line) for line in lines] + ["[DONE]"]


@dataclass
class Replay:
    """What the stand-in answers each chat request with, in turn: a list of ``data:`` payloads (sent with a pause
    after each), a status code, or ``"drop"`` after some payloads (the link cut)."""

    answers: list[Any]
    pause: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    listed: bool = True
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def stand_in(replay: Replay, prefix: str) -> Starlette:
    async def models(_: Request) -> Response:
        if not replay.listed:
            return JSONResponse({"error": "Not Found"}, status_code=404)
        return JSONResponse({"object": "list", "data": [{"id": SERVED, "object": "model", "owned_by": "x"}]})

    async def completions(request: Request) -> Response:
        body = await request.json()
        replay.requests.append(body)
        if body.get("model") != SERVED:  # as vLLM refuses it (OpenVINO Model Server: 404 too)
            message = f"The model `{body.get('model')}` does not exist."
            error = {"object": "error", "message": message, "type": "NotFoundError", "param": None, "code": 404}
            return JSONResponse(error, status_code=404)
        answer = replay.answers.pop(0)
        if isinstance(answer, int):
            return JSONResponse({"error": {"message": "no", "type": "x"}}, status_code=answer)

        async def events() -> AsyncIterator[bytes]:
            try:
                for payload in answer:
                    if payload == "drop":
                        raise ConnectionResetError("the link is cut")  # uvicorn ends the response unfinished
                    yield f"data: {payload}\n\n".encode()
                    await asyncio.sleep(replay.pause)
            finally:
                replay.closed.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[Route(f"{prefix}/models", models), Route(f"{prefix}/chat/completions", completions, methods=["POST"])]
    )


@pytest.fixture
def replayed() -> Callable[..., Any]:
    def start(answers: list[Any], prefix: str = "/v1", **options: Any) -> tuple[Replay, Any]:
        replay = Replay(answers, **options)
        return replay, serving(stand_in(replay, prefix))

    return start


async def ask(
    url: str, question: str = "What is this?", assumed: ServedModel = ASSUMED, **options: Any
) -> tuple[RemoteEngine, list[Event]]:
    client = RemoteEngine(url, SETTINGS, namespace="bot1", assumed=assumed, **options)
    try:
        return client, [event async for event in client.ask("chat", [], Turn("user", question), asker=7)]
    finally:
        await client.aclose()


def ended(events: list[Event]) -> Finished:
    assert isinstance(events[-1], Finished), events
    return events[-1]


async def test_a_vllm_stream_is_read_as_the_engines_events(replayed: Callable[..., Any]) -> None:
    replay, server = replayed([vllm_chunks(["A ", "red ", "square."])])
    async with server as url:
        _, events = await ask(f"{url}/v1")
    assert [event.text for event in events if isinstance(event, Chunk)] == ["A ", "red ", "square."]
    answer = ended(events)
    assert answer.status == "complete" and answer.text == "A red square."
    assert answer.report.generated_tokens == 3 and answer.report.input_tokens == 812
    [request] = replay.requests
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is this?"},
    ]
    assert request["max_tokens"] == 64 and request["user"] == "7" and request["model"] == SERVED


async def test_openvino_model_server_without_a_model_list_is_asked_as_assumed(replayed: Callable[..., Any]) -> None:
    """OVMS serves under /v3; where a server lists no model the client plans with what the settings say."""
    _, server = replayed([ovms_chunks(["It ", "is ", "a ", "cat."])], prefix="/v3", listed=False)
    async with server as url:
        client, events = await ask(f"{url}/v3")
    assert not client.listed and client.num_crops == ASSUMED.num_crops
    answer = ended(events)
    assert answer.status == "complete" and answer.text == "It is a cat." and answer.report.generated_tokens == 4


async def test_a_length_finish_is_a_complete_answer(replayed: Callable[..., Any]) -> None:
    _, server = replayed([vllm_chunks(["one ", "two"], finish="length")])
    async with server as url:
        _, events = await ask(f"{url}/v1")
    assert ended(events).status == "complete"


async def test_a_server_error_in_the_stream_ends_the_answer_as_failed_with_its_text(
    replayed: Callable[..., Any],
) -> None:
    error = json.dumps({"error": {"object": "error", "message": "engine dead", "type": "InternalServerError"}})
    _, server = replayed([[*vllm_chunks(["Half ", "an "])[:3], error]])
    async with server as url:
        _, events = await ask(f"{url}/v1")
    answer = ended(events)
    assert answer.status == "failed" and answer.text == "Half an " and "engine dead" in (answer.error or "")


async def test_a_link_cut_before_the_first_word_is_asked_once_more_and_after_it_ends_the_answer(
    replayed: Callable[..., Any],
) -> None:
    replay, server = replayed([["drop"], vllm_chunks(["Fine."]), [*vllm_chunks(["Cut ", "off"])[:2], "drop"]])
    async with server as url:
        _, first = await ask(f"{url}/v1")
        _, second = await ask(f"{url}/v1")
    assert ended(first).status == "complete" and ended(first).text == "Fine."
    assert len(replay.requests) == 3, "the first question was sent twice"
    assert ended(second).status == "failed" and ended(second).text == "Cut "


async def test_a_server_down_before_and_after_one_try_ends_as_failed(unused_tcp_port: int) -> None:
    _, events = await ask(f"http://127.0.0.1:{unused_tcp_port}/v1")
    answer = ended(events)
    assert answer.status == "failed" and answer.text == "" and "ConnectError" in (answer.error or "")


async def test_a_full_server_is_a_full_line(replayed: Callable[..., Any]) -> None:
    _, server = replayed([429])
    async with server as url:
        client = RemoteEngine(f"{url}/v1", SETTINGS, namespace="bot1", assumed=ASSUMED)
        try:
            with pytest.raises(QueueFull):
                await anext(client.ask("chat", [], Turn("user", "hi")))
        finally:
            await client.aclose()


async def test_stop_closes_the_stream(replayed: Callable[..., Any]) -> None:
    replay, server = replayed([vllm_chunks([f"w{n} " for n in range(200)])], pause=0.02)
    async with server as url:
        client = RemoteEngine(f"{url}/v1", SETTINGS, namespace="bot1", assumed=ASSUMED)
        try:
            events: list[Event] = []
            async for event in client.ask("chat", [], Turn("user", "Go on.")):
                events.append(event)
                if len(events) == 3:
                    assert client.cancel("chat")
            await asyncio.wait_for(replay.closed.wait(), 10)  # the server saw the client go
        finally:
            await client.aclose()
    answer = ended(events)
    assert answer.status == "cancelled" and answer.text.startswith("w0 w1 w2 ")
    assert len(answer.text.split()) < 50


async def test_a_server_that_lists_no_model_is_asked_for_the_one_the_settings_name(
    replayed: Callable[..., Any],
) -> None:
    """Without a model list the request names MODEL; a server that serves another refuses it, and the answer ends
    as failed with the server's reason (after the one try more that a failure before the first word gets)."""
    replay, server = replayed([], listed=False)
    async with server as url:
        _, events = await ask(f"{url}/v1", assumed=replace(ASSUMED, model_id="someone/other-model"))
    answer = ended(events)
    assert answer.status == "failed" and "does not exist" in (answer.error or ""), answer
    assert [request["model"] for request in replay.requests] == ["someone/other-model"] * 2
