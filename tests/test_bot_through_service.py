"""The bot with MODEL_SERVICE_URL: the same chat through a model service (service/http_app.py over the engine on
the tiny model, served by uvicorn here) as through its own model process: a photo and a follow-up the
service reads from its cache, Stop, Retry, /model; /convert is refused, and the bot starts before its
service does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from fastapi import FastAPI

from bot import texts
from bot.history import ConversationKey
from bot.output import buttons
from devkit.bot_api_server import FakeBotApi
from devkit.harness import (
    ADMIN,
    USER,
    bot_settings,
    has_retry,
    photo_bytes,
    press,
    running_bot,
    stored_messages,
    streaming,
    wait_answers,
)
from devkit.uvicorn_server import serving
from engine.engine import Engine
from engine.generation import GenerationSettings
from engine.remote_engine import RemoteEngine
from model_store.store import ModelEntry, ModelStore
from service.http_app import Served, create_app
from tests.test_engine import load

# The service's own bounds: long answers for Stop (the random-weight model may say <|end|> at any point).
CHAT = USER
SERVICE_SETTINGS = GenerationSettings(max_new_tokens=4000, ignore_eos=True, system_prompt="unused")


@dataclass
class Service:
    url: str
    engine: Engine


def service_app(engine: Engine) -> FastAPI:
    served = Served(
        "phi3bot-tiny",
        0,
        SERVICE_SETTINGS,
        num_crops=engine.num_crops,
        history_tokens=engine.history_tokens,
        details={"source": "someone/tiny-phi3v", "precision": "int4", "device": "CPU"},
        kv_cache_tokens=engine.kv_cache_tokens,
    )
    return create_app(engine, served)


@pytest.fixture
async def service(int4_store: tuple[ModelStore, ModelEntry]) -> AsyncIterator[Service]:
    engine = Engine(load(int4_store[1]), SERVICE_SETTINGS)
    try:
        async with serving(service_app(engine)) as url:
            yield Service(f"{url}/v1", engine)
    finally:
        await engine.aclose()


async def test_a_chat_through_the_service_photo_follow_up_stop_and_retry(
    api: FakeBotApi, service: Service, tmp_path: Path
) -> None:
    empty_store = tmp_path / "no-models-here"
    settings = bot_settings(
        api, empty_store, tmp_path, model_service_url=service.url, max_new_tokens=24, stream_drafts=False
    )
    async with running_bot(api, settings) as bot:
        assert isinstance(bot.services.engine, RemoteEngine) and bot.services.engine.listed
        api.push_message(CHAT, photo=photo_bytes(), caption="What is in this picture?", user_id=USER)
        await wait_answers(api, CHAT, 1)
        api.push_message(CHAT, "And the colours?", user_id=USER)
        await wait_answers(api, CHAT, 2)
        stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
        assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "complete")] * 2
        assert len(stored[0].images) == 1
        assert service.engine.stats.answered == 2 and service.engine.stats.replays == 0, "the photo stayed read"
        first, second = api.messages(CHAT)
        assert has_retry(second) and first.text.strip()

        press(api, second, buttons.RETRY, user_id=USER)
        await wait_answers(api, CHAT, 3)
        again = api.messages(CHAT)[2]
        assert again.text.strip() and again.text != second.text, "another take samples"

        engine = bot.services.engine
        engine.settings = replace(engine.settings, max_new_tokens=4000)  # the bot asks for a long answer
        api.push_message(ADMIN, "Write a very long story.", user_id=ADMIN)
        await api.wait_for(lambda: streaming(api, ADMIN), 30, "streaming started")
        [long_answer] = api.messages(ADMIN)
        press(api, long_answer, buttons.STOP, user_id=ADMIN)
        await wait_answers(api, ADMIN, 1)
        assert long_answer.text.endswith("Stopped.")
        await api.wait_for(lambda: not service.engine.queue.in_line(), 30, "the service stopped it")
        assert service.engine.stats.cancelled == 1

        api.push_message(ADMIN, "/model", user_id=ADMIN)
        api.push_message(ADMIN, "/convert", user_id=ADMIN)
        await api.wait_for(lambda: texts.CONVERT_ON_THE_SERVICE in api.visible_text(ADMIN), 30, "/convert refused")
        shown = "\n".join(api.visible_text(ADMIN))
        assert "Model: someone/tiny-phi3v" in shown and "Served by a model service" in shown
    assert not list(empty_store.glob("*/*")), "nothing was converted or loaded here"


async def test_the_bot_starts_before_its_service_and_asks_it_once_it_is_up(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path, unused_tcp_port: int
) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/v1"
    settings = bot_settings(api, tmp_path / "store", tmp_path, model_service_url=url, max_new_tokens=12)
    async with running_bot(api, settings) as bot:
        engine = bot.services.engine
        assert isinstance(engine, RemoteEngine) and not engine.listed
        assert engine.num_crops == settings.num_crops, "planned for as the settings say until the service says"
        local = Engine(load(int4_store[1]), SERVICE_SETTINGS)
        try:
            async with serving(service_app(local), unused_tcp_port):
                api.push_message(CHAT, photo=photo_bytes(), caption="What is this?", user_id=USER)
                await wait_answers(api, CHAT, 1)
                assert engine.listed and local.stats.answered == 1
        finally:
            await local.aclose()


async def test_a_bot_restart_keeps_the_services_cache(api: FakeBotApi, service: Service, tmp_path: Path) -> None:
    """The model's state lives in the service: after the bot restarts, a follow-up about the photo is read from
    the service's cache, not read again (the local engine's new process would read the photo again)."""
    settings = bot_settings(
        api, tmp_path / "store", tmp_path, model_service_url=service.url, max_new_tokens=12, warm_up_hours=0
    )  # no warm-up at the start, which would read the conversation again if the service had lost it
    async with running_bot(api, settings):
        api.push_message(CHAT, photo=photo_bytes(), caption="What is in this picture?", user_id=USER)
        await wait_answers(api, CHAT, 1)
    async with running_bot(api, settings) as bot:
        api.push_message(CHAT, "And its colours?", user_id=USER)
        await wait_answers(api, CHAT, 2)
        stored = await stored_messages(bot.services.history, ConversationKey(CHAT))
    assert [m.status for m in stored] == ["complete"] * 4
    assert service.engine.stats.answered == 2 and service.engine.stats.replays == 0, "the photo was not read again"
