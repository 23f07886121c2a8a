"""The model service on Ray Serve (service/deployment.py): two replicas of the tiny model in a local Ray cluster
of this module's own, asked over HTTP by the remote engine and by a plain client.  A conversation stays on the
replica that holds its cache, a new one goes to the idle replica, Stop stops the answer on its replica, and a
replica killed mid-answer ends that answer as failed, has the question waiting there asked once more elsewhere,
and leaves its conversations to the live replica.  The bot, given the service's address, drafts, retries, reads a
PDF and stops through it as it does with its own model.

Each module (each pytest-xdist worker) starts a cluster of its own: its own temporary directory, free ports, and
a token of its own (Ray's default would be written to ~/.ray and shared)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from bot.history import ConversationKey
from bot.output import buttons
from devkit.bot_api_server import FakeBotApi
from devkit.harness import (
    ADMIN,
    USER,
    answer_drafts,
    bot_settings,
    photo_bytes,
    press,
    running_bot,
    stored_messages,
    streaming,
    wait_answers,
)
from devkit.media_files import pdf
from engine.conversation import Turn
from engine.engine import Chunk, Event, Finished, Waiting
from engine.generation import GenerationSettings
from engine.openai_wire import CONVERSATION_HEADER, StreamReader, request_body
from engine.remote_engine import RemoteEngine, ServedModel
from model_store.loader import ModelChoice
from model_store.store import ModelEntry, ModelStore
from service.deployment import APP_NAME, CLUSTER_ENVIRONMENT, REPLICA_HEADER, ReplicaModel, build_app
from tests.test_engine import SETTINGS, photo

# The service's bounds: long answers to stop or cut (the random-weight model may say <|end|> at any point).
SERVICE_SETTINGS = GenerationSettings(max_new_tokens=4000, ignore_eos=True, system_prompt="unused")
LONG = replace(SETTINGS, max_new_tokens=4000)
ASSUMED = ServedModel("assumed", num_crops=16, history_tokens=500, kv_cache_tokens=500)
NAMESPACE = "t"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def service(int4_store: tuple[ModelStore, ModelEntry]) -> Iterator[str]:
    """The service's address; Ray's temporary directory is short, as its socket paths must be."""
    store, entry = int4_store
    temporary = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in CLUSTER_ENVIRONMENT.items():  # as phi3bot serve starts a cluster
                patch.setenv(name, value)
            patch.delenv("RAY_AUTH_MODE", raising=False)  # a new local cluster asks for a token (ray.init sets it)
            patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
            ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temporary)
            try:
                port = free_port()
                serve.start(http_options={"host": "127.0.0.1", "port": port})
                choice = ModelChoice(store.root, entry.source, entry.precision, kv_cache_gb=1)
                model = ReplicaModel(choice, SERVICE_SETTINGS, batch_max=1)  # one answer at a time: a second waits
                serve.run(build_app(model, replicas=2, replica_cpus=0.5), name=APP_NAME, route_prefix="/")
                yield f"http://127.0.0.1:{port}"
            finally:
                serve.shutdown()
                ray.shutdown()
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def model_replicas() -> list[dict[str, str]]:
    """The model replicas' actors, the live ones only."""
    named = [actor for actor in ray.util.list_named_actors(all_namespaces=True) if "#ModelReplica#" in actor["name"]]
    live = []
    for actor in named:
        try:
            ray.get(ray.get_actor(actor["name"], namespace=actor["namespace"]).__ray_ready__.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ValueError):
            continue
        live.append(actor)
    return live


def both_running() -> bool:
    deployment = serve.status().applications[APP_NAME].deployments["ModelReplica"]
    running = deployment.status == "HEALTHY" and deployment.replica_states.get("RUNNING") == 2
    return running and len(model_replicas()) == 2


@pytest.fixture(autouse=True)
async def _both_replicas(service: str) -> None:
    """Each test starts with both model replicas running: pytest-xdist may run one after the test that kills a
    replica, and it waits for the replacement."""
    deadline = time.monotonic() + 120
    while not await asyncio.to_thread(both_running):
        assert time.monotonic() < deadline, "the killed model replica was not replaced"
        await asyncio.sleep(0.5)


@asynccontextmanager
async def remote(url: str, settings: GenerationSettings = SETTINGS) -> AsyncIterator[RemoteEngine]:
    client = RemoteEngine(f"{url}/v1", settings, namespace=NAMESPACE, assumed=ASSUMED)
    try:
        await client.describe()
        yield client
    finally:
        await client.aclose()


async def asked(
    plain: httpx.AsyncClient,
    conversation: str,
    past: Sequence[Turn],
    question: Turn,
    settings: GenerationSettings = SETTINGS,
) -> tuple[str, Finished]:
    """A question asked as the remote engine asks it (``conversation`` in the remote engine's namespace): the
    replica that took it, and how its answer ended."""
    body = request_body(past, question, settings, model="phi3bot", asker=None, stream=True)
    headers = {CONVERSATION_HEADER: f"{NAMESPACE}/{conversation}"}
    reader = StreamReader()
    async with plain.stream("POST", "/v1/chat/completions", json=body, headers=headers) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                reader.read(line[5:].strip())
    return reply.headers[REPLICA_HEADER], reader.end()


async def home(plain: httpx.AsyncClient, conversation: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    """The replica the conversation's calls go to, and its engine's counts."""
    reply = await plain.get("/v1/phi3bot/replica", headers={CONVERSATION_HEADER: f"{namespace}/{conversation}"})
    assert reply.status_code == 200, reply.text
    return reply.json()


async def stopped_on_its_replica(
    plain: httpx.AsyncClient, conversation: str, before: dict[str, Any], namespace: str = NAMESPACE
) -> None:
    """The replica's engine stops an answer within a token once its stream closes: soon after, the replica that
    held the conversation counts one more cancelled answer, well before its end, and nothing in line."""
    after = before
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = await home(plain, conversation, namespace)
        if after["cancelled"] > before["cancelled"] and after["in_line"] == 0:
            break
        await asyncio.sleep(0.05)
    assert after["replica"] == before["replica"]
    assert after["cancelled"] == before["cancelled"] + 1 and after["in_line"] == 0
    assert after["generated_tokens"] - before["generated_tokens"] < 1000, "stopped well before the end"


async def test_a_conversation_stays_on_the_replica_that_holds_it(service: str) -> None:
    """A photo question and twenty follow-ups: one replica takes them all, and reads each follow-up from its
    cache (nothing replayed), as a single engine does."""
    async with httpx.AsyncClient(base_url=service, timeout=120) as plain:
        question = Turn("user", "What is in this image?", (photo((200, 30, 30)),))
        replica, first = await asked(plain, "sticky", [], question)
        assert first.status == "complete"
        past = [question, Turn("assistant", first.text)]
        for number in range(20):
            follow_up = Turn("user", f"And detail number {number}?")
            took, answer = await asked(plain, "sticky", past, follow_up)
            assert took == replica, f"follow-up {number} went to another replica"
            assert answer.status == "complete" and answer.report.replays == 0, (number, answer)
            past += [follow_up, Turn("assistant", answer.text)]
        assert (await home(plain, "sticky"))["replica"] == replica


async def test_a_photo_read_ahead_is_asked_about_where_it_was_read(service: str) -> None:
    async with remote(service) as client, httpx.AsyncClient(base_url=service, timeout=120) as plain:
        sent_alone = Turn("user", "", (photo((250, 120, 10)),))
        prepared = await client.prepare("ahead", [sent_alone])
        assert prepared.error is None and prepared.pieces == 1
        took, answer = await asked(plain, "ahead", [sent_alone], Turn("user", "What is written on it?"))
        assert answer.status == "complete" and answer.report.replays == 0, "the photo was read ahead, not when asked"
        assert (await home(plain, "ahead"))["replica"] == took


async def test_a_new_conversation_goes_to_the_idle_replica(service: str) -> None:
    """And the busy conversation's replica refuses a second question of it, as one engine does."""
    async with remote(service, LONG) as client, httpx.AsyncClient(base_url=service, timeout=120) as plain:
        long = client.ask("busy", [], Turn("user", "Tell me a long story."))
        events = [await anext(long) for _ in range(4)]  # Started, then text: the answer runs
        assert any(isinstance(event, Chunk) for event in events)
        busy = (await home(plain, "busy"))["replica"]
        for conversation in ("idle-1", "idle-2"):
            took, answer = await asked(plain, conversation, [], Turn("user", "Hello?"))
            assert took != busy and answer.status == "complete"
        again = {"messages": [{"role": "user", "content": "And another?"}]}  # the busy conversation, from elsewhere
        reply = await plain.post("/v1/chat/completions", json=again, headers={CONVERSATION_HEADER: f"{NAMESPACE}/busy"})
        assert reply.status_code == 409 and reply.json()["error"]["type"] == "conversation_busy"
        assert reply.headers[REPLICA_HEADER] == busy
        assert client.cancel("busy")
        stopped = [event async for event in long][-1]
        assert isinstance(stopped, Finished) and stopped.status == "cancelled"


async def test_stop_stops_the_answer_on_its_replica(service: str) -> None:
    async with remote(service, LONG) as client, httpx.AsyncClient(base_url=service, timeout=120) as plain:
        before: dict[str, Any] | None = None
        events: list[Event] = []
        async for event in client.ask("stop", [], Turn("user", "Describe it.", (photo((10, 200, 10)),))):
            events.append(event)
            if before is None and sum(isinstance(e, Chunk) for e in events) == 3:
                before = await home(plain, "stop")
                assert before["in_line"] == 1
                assert client.cancel("stop")
        stopped = events[-1]
        assert isinstance(stopped, Finished) and stopped.status == "cancelled" and stopped.text
        assert before is not None
        await stopped_on_its_replica(plain, "stop", before)


async def test_a_replica_killed_mid_answer_fails_that_answer_and_its_conversations_go_on(service: str) -> None:
    """The killed replica was answering one conversation and had another's question waiting (one answer at a
    time there): the first ends as failed with its text so far, the second is asked once more of the other replica
    and answered, and the first's next question goes to the other replica.  Last in this module: the cluster
    starts a replacement replica afterwards."""
    async with (
        remote(service, LONG) as client,
        remote(service) as other_client,
        httpx.AsyncClient(base_url=service, timeout=120) as plain,
    ):
        question = Turn("user", "What is in this image?", (photo((30, 30, 220)),))
        doomed, first = await asked(plain, "killed", [], question)
        hello = Turn("user", "Hello?")
        for attempt in range(10):  # a conversation at home on the same replica (new ones spread over both)
            took, greeting = await asked(plain, f"behind-{attempt}", [], hello)
            if took == doomed:
                break
        assert took == doomed
        behind = f"behind-{attempt}"
        events: list[Event] = []
        cut_short = client.ask("killed", [question, Turn("assistant", first.text)], Turn("user", "Tell me more."))
        while sum(isinstance(event, Chunk) for event in events) < 3:
            events.append(await anext(cut_short))
        waiting = other_client.ask(behind, [hello, Turn("assistant", greeting.text)], Turn("user", "And then?"))
        assert isinstance(await anext(waiting), Waiting)
        (actor,) = [actor for actor in model_replicas() if actor["name"].endswith(f"#{doomed}")]
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
        events += [event async for event in cut_short]
        cut = events[-1]
        assert isinstance(cut, Finished) and cut.status == "failed", cut
        assert cut.text == "".join(event.text for event in events if isinstance(event, Chunk)) and cut.text
        moved = [event async for event in waiting]
        assert isinstance(moved[-1], Finished) and moved[-1].status == "complete", moved[-1]
        assert (await home(plain, behind))["replica"] != doomed
        past = [question, Turn("assistant", first.text), Turn("user", "Tell me more."), Turn("assistant", cut.text)]
        took, answer = await asked(plain, "killed", past, Turn("user", "And the colour?"))
        assert took != doomed and answer.status == "complete"


async def test_a_chat_through_ray_photo_follow_up_drafts_retry_a_pdf_and_stop(
    service: str, api: FakeBotApi, tmp_path: Path
) -> None:
    """The bot with MODEL_SERVICE_URL at the Ray service: one replica holds the chat, reads its photo once and
    answers every question of it, drafted as the words come; Retry, a PDF's pages and Stop work as locally."""
    empty_store = tmp_path / "no-models-here"
    settings = bot_settings(api, empty_store, tmp_path, model_service_url=f"{service}/v1", max_new_tokens=24)
    bot_namespace = f"bot{api.token.split(':')[0]}"  # how the bot names its conversations to a service
    async with running_bot(api, settings) as bot, httpx.AsyncClient(base_url=service, timeout=60) as plain:
        api.push_message(USER, photo=photo_bytes(), caption="What is in this picture?", user_id=USER)
        await wait_answers(api, USER, 1)
        assert answer_drafts(api, USER), "the answer was drafted as its words came"
        before = await home(plain, str(ConversationKey(USER)), bot_namespace)
        api.push_message(USER, "And the colours?", user_id=USER)
        await wait_answers(api, USER, 2)
        held = await home(plain, str(ConversationKey(USER)), bot_namespace)
        assert held["replica"] == before["replica"] and held["answered"] == before["answered"] + 1
        assert held["replays"] == before["replays"], "the follow-up was read from the replica's cache"

        press(api, api.messages(USER)[1], buttons.RETRY, user_id=USER)
        await wait_answers(api, USER, 3)
        assert api.messages(USER)[2].text.strip(), "another take"

        api.push_message(USER, document=(pdf(2), "two.pdf", "application/pdf"), caption="Summarise it.", user_id=USER)
        await wait_answers(api, USER, 4)
        assert api.messages(USER)[3].text.endswith("📄 I looked at pages 1 and 2 of a 2-page PDF.")
        stored = await stored_messages(bot.services.history, ConversationKey(USER))
        assert [m.status for m in stored] == ["complete"] * len(stored) and len(stored[-2].images) == 2

        engine = bot.services.engine
        engine.settings = replace(engine.settings, max_new_tokens=4000)  # the bot asks for a long answer
        idle = await home(plain, str(ConversationKey(ADMIN)), bot_namespace)
        api.push_message(ADMIN, "Write a very long story.", user_id=ADMIN)
        await api.wait_for(lambda: streaming(api, ADMIN), 60, "streaming started")
        api.push_message(ADMIN, "/stop", user_id=ADMIN)  # a drafted answer has no button yet
        await api.wait_for(lambda: any(t.endswith("Stopped.") for t in api.visible_text(ADMIN)), 30, "stopped")
        await stopped_on_its_replica(plain, str(ConversationKey(ADMIN)), idle, bot_namespace)
    assert not list(empty_store.glob("*/*")), "nothing was loaded where the bot runs"
