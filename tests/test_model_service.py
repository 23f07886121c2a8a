"""The model service's HTTP side (service/http_app.py) over the engine on the tiny model, read by the remote
engine (engine/remote_engine.py) and by a plain client of the OpenAI protocol: the same answers as the local
engine, Stop closing the stream, the protocol's shapes and errors."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import numpy as np
import pytest

from bot.media.decoding import ImageLimits
from devkit.uvicorn_server import serving
from engine.conversation import Turn
from engine.engine import Chunk, Engine, Event, Started
from engine.fair_queue import AlreadyQueued
from engine.generation import GenerationSettings
from engine.openai_wire import CONVERSATION_HEADER, png_data_url
from engine.remote_engine import RemoteEngine, ServedModel
from model_store.store import ModelEntry, ModelStore
from service import http_app
from service.http_app import Served, create_app
from tests.test_engine import SETTINGS, finished, load, photo


@dataclass
class Service:
    url: str
    engine: Engine


@pytest.fixture
async def service(int4_store: tuple[ModelStore, ModelEntry]) -> AsyncIterator[Service]:
    engine = Engine(load(int4_store[1]), SETTINGS)
    served = Served("phi3bot-tiny", 0, SETTINGS, num_crops=engine.num_crops, history_tokens=2000, details={})
    try:
        async with serving(create_app(engine, served)) as url:
            yield Service(url, engine)
    finally:
        await engine.aclose()


ASSUMED = ServedModel("assumed", num_crops=16, history_tokens=500, kv_cache_tokens=500)


async def remote(service: Service, settings: GenerationSettings = SETTINGS) -> RemoteEngine:
    client = RemoteEngine(f"{service.url}/v1", settings, namespace="test-bot", assumed=ASSUMED)
    await client.describe()
    return client


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


async def test_the_service_answers_as_the_local_engine_does_and_keeps_the_conversation(service: Service) -> None:
    """Greedy answers are the same through the service, so the photo arrived pixel for pixel and the prompt is
    the one the local engine builds; the follow-up is about the photo sent before."""
    client = await remote(service)
    try:
        assert client.num_crops == service.engine.num_crops and client.history_tokens == 2000
        image = photo((200, 30, 30))
        question = Turn("user", "What is in this image?", (image,))
        local = finished([event async for event in service.engine.ask("local", [], question)])
        events = await collect(client.ask("chat-1", [], question))
        assert isinstance(events[0], Started) and events[0].images == 1
        through = finished(events)
        assert through.status == "complete" and through.text == local.text
        assert "".join(event.text for event in events if isinstance(event, Chunk)) == through.text
        assert through.report.generated_tokens == 12 and through.report.input_tokens == local.report.input_tokens
        past = [question, Turn("assistant", through.text)]
        follow_up = Turn("user", "And the colour?")
        local_past = [question, Turn("assistant", local.text)]
        local_again = finished(await collect(service.engine.ask("local", local_past, follow_up)))
        again = finished(await collect(client.ask("chat-1", past, follow_up)))
        assert again.text == local_again.text
        assert again.report.replays == 0, "the service kept the conversation's photo"
        assert client.stats.answered == 2
    finally:
        await client.aclose()


async def test_stop_closes_the_stream_and_the_service_stops_the_answer(service: Service) -> None:
    service.engine.settings = replace(SETTINGS, max_new_tokens=400)
    client = await remote(service, replace(SETTINGS, max_new_tokens=400))
    try:
        events: list[Event] = []
        async for event in client.ask("chat-2", [], Turn("user", "Describe it.", (photo((10, 200, 10)),))):
            events.append(event)
            if sum(isinstance(e, Chunk) for e in events) == 3:
                assert client.cancel("chat-2")
        stopped = finished(events)
        assert stopped.status == "cancelled" and stopped.text
        for _ in range(200):  # the service's engine stops it within a token once the stream is closed
            if service.engine.stats.cancelled == 1 and not service.engine.queue.in_line():
                break
            await asyncio.sleep(0.05)
        assert service.engine.stats.cancelled == 1 and not service.engine.queue.in_line()
        assert service.engine.stats.generated_tokens < 200, "stopped well before the end"
        assert not client.cancel("chat-2"), "nothing left to stop"
    finally:
        await client.aclose()


async def test_a_conversation_asks_one_question_at_a_time(service: Service) -> None:
    long = replace(SETTINGS, max_new_tokens=2000)  # still running when the other client asks (it is stopped then)
    service.engine.settings = long
    client = await remote(service, long)
    try:
        first = client.ask("chat-3", [], Turn("user", "Tell me a long story."))
        assert isinstance(await anext(first), Started)
        with pytest.raises(AlreadyQueued):
            await anext(client.ask("chat-3", [], Turn("user", "And another one?")))
        async with httpx.AsyncClient(base_url=service.url) as plain:  # another client naming the same conversation
            reply = await plain.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}]},
                headers={CONVERSATION_HEADER: "test-bot/chat-3"},
            )
        assert reply.status_code == 409 and reply.json()["error"]["type"] == "conversation_busy"
        client.cancel("chat-3")
        assert finished(await collect(first)).status == "cancelled"
    finally:
        await client.aclose()


def sse_payloads(body: str) -> list[str]:
    return [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]


async def test_a_plain_openai_client_gets_the_protocols_shapes(service: Service) -> None:
    image = photo((30, 30, 220))
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": png_data_url(image.pixels)}},
    ]
    body = {
        "model": "anything",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(base_url=service.url, timeout=120) as plain:
        models = (await plain.get("/v1/models")).json()
        assert models["object"] == "list" and models["data"][0]["id"] == "phi3bot-tiny"
        assert (await plain.get("/health")).json() == {"status": "ok"}
        streamed = await plain.post("/v1/chat/completions", json=body)
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(streamed.text)
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(payload) for payload in payloads[:-1]]
        assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        reasons = [choice["finish_reason"] for c in chunks for choice in c["choices"] if choice["finish_reason"]]
        assert reasons == ["length"], "five tokens asked, five written (ignore_eos)"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
        text = "".join(choice["delta"].get("content", "") for c in chunks for choice in c["choices"])
        whole = await plain.post("/v1/chat/completions", json={**body, "stream": False, "stream_options": None})
        answer = whole.json()
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"] == text
        assert answer["usage"]["prompt_tokens"] == chunks[-1]["usage"]["prompt_tokens"] > 700


@pytest.mark.parametrize(
    ("content", "status", "kind"),
    [
        ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}], 400, "image_not_data_url"),
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}], 400, "image_not_base64"),
        (
            [
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"PK\x03\x04zip").decode()},
                }
            ],
            400,
            "image_rejected",
        ),
        ([{"type": "input_audio", "input_audio": {}}], 400, "unknown_content_part"),
    ],
)
async def test_requests_outside_the_protocol_are_refused_with_their_reason(
    service: Service, content: list[dict[str, object]], status: int, kind: str
) -> None:
    async with httpx.AsyncClient(base_url=service.url) as plain:
        reply = await plain.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
        assert reply.status_code == status and reply.json()["error"]["type"] == kind
        for bad in (
            b"{",
            b"[]",
            json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}).encode(),
        ):
            reply = await plain.post("/v1/chat/completions", content=bad)
            assert reply.status_code == 400, bad
    assert service.engine.stats.answered == 0


async def test_a_body_past_the_limit_is_refused_before_it_is_read_whole(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    engine = Engine(load(int4_store[1]), SETTINGS)
    served = Served("tiny", 0, SETTINGS, num_crops=4, history_tokens=2000, details={})
    try:
        async with serving(create_app(engine, served, max_body_bytes=1000)) as url, httpx.AsyncClient() as plain:
            text = "x" * 2000
            body = {"messages": [{"role": "user", "content": text}]}
            reply = await plain.post(f"{url}/v1/chat/completions", json=body)
            assert reply.status_code == 413 and reply.json()["error"]["type"] == "body_too_large"
    finally:
        await engine.aclose()


async def test_a_request_whose_images_decode_past_the_bound_is_refused(service: Service) -> None:
    """Thirteen plain images at the largest size the bot allows: a few kilobytes each as PNG, 21.7 MB each
    decoded, so the request is refused at the twelfth (MAX_DECODED_BYTES), before the engine sees it."""
    side = ImageLimits().max_side
    content: list[dict[str, Any]] = [{"type": "text", "text": "Compare them."}]
    content += [
        {"type": "image_url", "image_url": {"url": png_data_url(np.full((side, side, 3), shade, np.uint8))}}
        for shade in range(13)
    ]
    async with httpx.AsyncClient(base_url=service.url, timeout=120) as plain:
        reply = await plain.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
    assert reply.status_code == 413 and reply.json()["error"]["type"] == "images_too_large"
    assert reply.json()["error"]["megabytes"] == http_app.MAX_DECODED_BYTES // (1024 * 1024)
    assert service.engine.stats.answered == 0


async def test_slow_senders_give_their_turn_up_and_others_are_answered(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every parsing turn taken by a client that declared a body and sends it a byte at a time: each is refused
    after BODY_SECONDS, and a question waiting behind them is then answered."""
    monkeypatch.setattr(http_app, "BODY_SECONDS", 1.0)
    host, port = service.url.removeprefix("http://").split(":")
    slow = []
    for _ in range(http_app.PARSING_AT_ONCE):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{"
        )
        await writer.drain()
        slow.append((reader, writer))
    await asyncio.sleep(0.2)  # their bodies are being waited for
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as plain:
        reply = await plain.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello?"}]})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    for reader, writer in slow:
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status.split()[1] == b"408", status
        writer.close()


async def test_with_a_key_only_its_holders_are_answered(int4_store: tuple[ModelStore, ModelEntry]) -> None:
    """The key is compared as a whole; the health check stays open for orchestrators."""
    engine = Engine(load(int4_store[1]), SETTINGS)
    served = Served("tiny", 0, SETTINGS, num_crops=4, history_tokens=2000, details={})
    try:
        async with serving(create_app(engine, served, api_key="s3cret")) as url, httpx.AsyncClient() as plain:
            assert (await plain.get(f"{url}/health")).status_code == 200
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cre"}):
                reply = await plain.get(f"{url}/v1/models", headers=headers)
                assert reply.status_code == 401 and reply.json()["error"]["type"] == "invalid_api_key"
            client = RemoteEngine(f"{url}/v1", SETTINGS, namespace="t", assumed=ASSUMED, api_key="s3cret")
            try:
                assert (await client.describe()).model_id == "tiny"
                answer = finished(await collect(client.ask("c", [], Turn("user", "hi"))))
                assert answer.status == "complete"
            finally:
                await client.aclose()
    finally:
        await engine.aclose()
