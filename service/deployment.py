"""The model service on Ray Serve (``phi3bot serve``): replicas of the model, each an engine with a model process
of its own, behind one ingress that speaks the OpenAI chat-completions protocol (service/http_app.py) and sends
each conversation to the replica that answered it last (service/affinity.py).

A replica starts its model's process from its constructor, which Ray runs on the replica's user-code thread: the
model's process is killed when the thread that started it ends (model_store/child_start.py), and that thread
lives as long as the replica, so the process ends with the replica, also when Ray kills it.  (Ray runs a sync
method on a thread of a pool instead.)

Stop: when an answer's client goes, the HTTP side closes the answer's events; closing them here cancels the call
to the replica, whose engine then stops the generation.  A replica that dies mid-answer (its actor ended: a model
process that dies is replaced by the replica's own engine) ends the answer as failed with the text so far; one
that dies before the first word has the question asked once more, as the engine does when its model process dies.
Ray's router drops a dead replica when a request to it fails, so that question, and the conversation's next,
go to a live replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import time
from collections.abc import AsyncGenerator, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import ray
from fastapi import FastAPI, Request
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.conversation import Turn
from engine.engine import Chunk, Engine, Event, Finished, Prepared
from engine.fair_queue import AlreadyQueued, QueueFull
from engine.generation import GenerationSettings
from engine.openai_wire import CONVERSATION_HEADER, WireError
from engine.pipeline_process import LoadedModel, load_pipeline
from model_store.loader import ModelChoice
from service.affinity import MAX_CONVERSATIONS, ConversationAffinityRouter
from service.http_app import Served, create_app

log = logging.getLogger(__name__)

# Where this process starts a Ray cluster: no usage reports; workers at the normal priority (Ray starts them at
# nice 15 so that its own processes stay responsive, and a replica's model process, the work the service exists
# for, would lose the CPU to everything else on the machine); and Serve's control loop and metrics once a second
# rather than ten times, so Ray itself takes less of a small machine's CPU (README, "What the service costs"; a
# replica that dies is then replaced a second later at most). A cluster started with `ray start` takes the same
# variables from that command's environment (README, "Beyond one machine").
CLUSTER_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_worker_niceness": "0",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
}

APP_NAME = "phi3bot"
REPLICA_HEADER = "x-phi3bot-replica"  # names the replica that took a question, for operators and tests
SPARE_REQUESTS = 8  # a replica's room for preparations, resets and reports beside a full line of questions
INGRESS_REQUESTS = 10_000  # requests the ingress holds at once: nearly all wait on a replica's answer


@dataclass(frozen=True)
class ReplicaModel:
    """What each replica loads and how its engine answers: plain values, sent to every replica (no secret among
    them, unlike the bot's settings)."""

    choice: ModelChoice
    settings: GenerationSettings  # the defaults and bounds of every request
    queue_max: int = 20
    batch_max: int = 4
    history_tokens: int | None = None

    def load(self) -> LoadedModel:
        """Blocking: starts the model's process and compiles the model there."""
        return load_pipeline(self.choice.spec())


@serve.deployment
class ModelReplica:
    """One model in one engine.  Every call names its conversation first: the router reads it as the call's
    ``session_id`` (service/affinity.py), the engine as its key.  The methods are coroutines because Ray runs sync
    ones on threads of a pool, off the event loop the engine belongs to."""

    def __init__(self, model: ReplicaModel) -> None:
        self._name = serve.get_replica_context().replica_id.unique_id
        self._engine = Engine(
            model.load(),
            model.settings,
            queue_max=model.queue_max,
            batch_max=model.batch_max,
            history_tokens=model.history_tokens,
        )
        self._created = int(time.time())

    async def ask(
        self,
        conversation: str,
        past: Sequence[Turn],
        question: Turn,
        settings: GenerationSettings | None,
        asker: str | None,
    ) -> AsyncGenerator[str | Event | AlreadyQueued | QueueFull, None]:
        """This replica's name, then the engine's events, or the engine's refusal (AlreadyQueued / QueueFull) as
        an item: Ray logs an exception raised here as a failed request, with its traceback."""
        yield self._name
        events = self._engine.ask(conversation, past, question, settings=settings, asker=asker)
        async with contextlib.aclosing(events):
            try:
                first = await anext(events)
            except (AlreadyQueued, QueueFull) as refusal:
                yield refusal
                return
            yield first
            async for event in events:
                yield event

    async def prepare(
        self, conversation: str, past: Sequence[Turn], system_prompt: str | None, ahead: bool = False
    ) -> Prepared:
        return await self._engine.prepare(conversation, past, system_prompt=system_prompt, ahead=ahead)

    async def forget(self, conversation: str) -> None:
        self._engine.forget(conversation)

    async def report(self, conversation: str) -> dict[str, Any]:
        """This replica (the conversation's home, where the router sends its calls) and its engine's counts."""
        engine = self._engine
        return {
            "replica": self._name,
            "model_pid": engine.model.pipeline.pid,
            "in_line": len(engine.queue.in_line()),
            **asdict(engine.stats),
        }

    async def describe(self) -> Served:
        engine, entry = self._engine, self._engine.model.entry
        details = {
            "source": entry.source,
            "precision": entry.precision,
            "revision": entry.revision,
            "device": engine.model.device,
            "synthetic": entry.synthetic,
        }
        return Served(
            entry.source,
            self._created,
            engine.settings,
            num_crops=engine.model.num_crops,
            history_tokens=engine.history_tokens,
            details=details,
            kv_cache_tokens=engine.kv_cache_tokens,
        )

    async def check_health(self) -> None:
        """Ray replaces a replica whose checks fail a few times running; the engine restarts a dead model process
        itself when a question comes, so a replica fails them only while nothing asked it to."""
        if not self._engine.model.pipeline.alive:
            raise RuntimeError("the model's process is down")


@dataclass
class _Placement:
    replica: str | None = None  # the replica that took this HTTP request's question


_placement: contextvars.ContextVar[_Placement | None] = contextvars.ContextVar("placement", default=None)


class _ReplicaHeader:
    """Names the replica that took a question in the response's headers: a replica's events come after its name,
    so the name is known when the response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        placement = _Placement()
        token = _placement.set(placement)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and placement.replica is not None:
                header = (REPLICA_HEADER.encode(), placement.replica.encode())
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            _placement.reset(token)


class Replicas:
    """The engine interface of service/http_app.py (``Answerer``) over the handle to the model replicas."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle
        self._errands: set[asyncio.Task[None]] = set()

    def _of(self, key: Hashable) -> DeploymentHandle:
        return self._handle.options(session_id=str(key))

    async def ask(
        self,
        key: Hashable,
        past: Sequence[Turn],
        question: Turn,
        *,
        settings: GenerationSettings | None = None,
        asker: Hashable | None = None,
    ) -> AsyncGenerator[Event, None]:
        """As Engine.ask: raises AlreadyQueued / QueueFull before yielding anything."""
        said: list[str] = []
        shown = False  # an event went out: a refusal can no longer be raised
        for attempt in (1, 2):
            stream: DeploymentResponseGenerator = (
                self._of(key)
                .options(stream=True)
                .ask.remote(str(key), list(past), question, settings, None if asker is None else str(asker))
            )
            over = False  # the replica's call has ended: nothing to cancel
            failure: BaseException | None = None
            try:
                name = await anext(stream)
                if (placement := _placement.get()) is not None:
                    placement.replica = name  # seen only if the response has not started yet
                async for item in stream:
                    if isinstance(item, AlreadyQueued | QueueFull):
                        over = True
                        if not shown:
                            raise item
                        failure = item  # a second replica refused what the first could not answer
                        break
                    if isinstance(item, Chunk):
                        said.append(item.text)
                    over = isinstance(item, Finished)  # nothing left to stop once it is said
                    shown = True
                    yield item
                over = True
            except (RayActorError, RayTaskError) as error:
                over = True
                failure = error
            finally:
                if not over:  # the caller went away: the replica's engine stops the answer
                    stream.cancel()
            if failure is None:
                return
            if attempt == 1 and not said:
                log.warning("a model replica failed before answering (asked once more): %s", _described(failure))
                continue
            log.warning("a model replica failed mid-answer: %s", _described(failure))
            yield Finished(text="".join(said), status="failed", error=_described(failure))
            return

    async def prepare(
        self, key: Hashable, past: Sequence[Turn], *, system_prompt: str | None = None, ahead: bool = False
    ) -> Prepared:
        try:
            return await self._of(key).prepare.remote(str(key), list(past), system_prompt, ahead)
        except RayActorError as error:
            return Prepared(0, 0.0, _described(error))

    def forget(self, key: Hashable) -> None:
        errand = asyncio.get_running_loop().create_task(self._forget(key))
        self._errands.add(errand)
        errand.add_done_callback(self._errands.discard)

    async def _forget(self, key: Hashable) -> None:
        try:
            await self._of(key).forget.remote(str(key))
        except (RayActorError, RayTaskError) as error:
            log.warning("a model replica was not told of a reset: %s", _described(error))

    async def report(self, key: Hashable) -> dict[str, Any]:
        return await self._of(key).report.remote(str(key))


def _described(error: BaseException) -> str:
    """A line for the log and a failed answer: which kind of failure, without Ray's multi-line traceback."""
    if isinstance(error, RayActorError):
        return f"the model replica ended ({type(error).__name__})"
    cause = error.cause if isinstance(error, RayTaskError) else error
    return f"{type(cause).__name__}: {cause}"


async def service_app(replicas: DeploymentHandle, api_key: str | None = None) -> FastAPI:
    """The HTTP side (service/http_app.py) over the model replicas, and ``GET /v1/phi3bot/replica``: the replica
    holding the conversation the request names, with its engine's counts."""
    answerer = Replicas(replicas)
    served: Served = await replicas.describe.remote()
    app = create_app(answerer, served, api_key=api_key)

    @app.get("/v1/phi3bot/replica")
    async def replica(request: Request) -> dict[str, Any]:
        key = request.headers.get(CONVERSATION_HEADER)
        if not key:
            raise WireError("no_conversation")
        return await answerer.report(key)

    app.add_middleware(_ReplicaHeader)
    return app


@serve.deployment
@serve.ingress()
class Ingress:
    """Builds the HTTP side where it runs, once the model replicas can say what they serve.  (Ray sends this
    class by value, with only the names its code uses: the app is built by a function of this module.)"""

    def __init__(self, replicas: DeploymentHandle, api_key: str | None = None) -> None:
        self._replicas = replicas
        self._api_key = api_key

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return await service_app(self._replicas, self._api_key)


def build_app(
    model: ReplicaModel,
    *,
    replicas: int,
    replica_cpus: float = 1.0,
    api_key: str | None = None,
    max_conversations: int = MAX_CONVERSATIONS,
) -> serve.Application:
    """The service: ``replicas`` model replicas, each reserving ``replica_cpus`` of Ray's CPUs, and one ingress,
    which reserves none (it decodes images and relays streams) and must stay one: the router's homes are its own.
    ``api_key``: what clients must send as a bearer token (None: anyone who reaches the port)."""
    router = RequestRouterConfig(
        request_router_class=ConversationAffinityRouter,
        request_router_kwargs={"max_conversations": max_conversations},
    )
    model_replicas = ModelReplica.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus},
        max_ongoing_requests=model.queue_max + model.batch_max + SPARE_REQUESTS,
        request_router_config=router,
    ).bind(model)
    ingress = Ingress.options(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=INGRESS_REQUESTS)
    return ingress.bind(model_replicas, api_key)


def run(
    model: ReplicaModel,
    *,
    replicas: int,
    host: str,
    port: int,
    replica_cpus: float = 1.0,
    api_key: str | None = None,
) -> None:
    """Blocking: serves on ``host:port`` until interrupted (Ctrl-C, or SIGTERM from a service manager), in the Ray
    cluster RAY_ADDRESS names or else in a local one started here (without its dashboard and usage reports).
    Interrupted, it deletes the service, whose replicas finish their answers first (a Serve application outlives
    its driver in a shared cluster); a local cluster ends with this process."""
    for name, value in CLUSTER_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    ray.init(include_dashboard=False)
    # ray.init's own SIGTERM handler exits at once, which would leave the application in a shared cluster.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    serve.start(http_options={"host": host, "port": port})
    app = build_app(model, replicas=replicas, replica_cpus=replica_cpus, api_key=api_key)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        log.info("stopping the model service")
    serve.delete(APP_NAME)
