"""Builds the engine from settings: pick the model, load it, wrap it; shared by the bot and the terminal modes."""

from __future__ import annotations

import asyncio
import logging

from bot.settings import Settings
from engine.backend import Backend
from engine.engine import Engine
from engine.generation import GenerationSettings
from engine.pipeline_process import LoadedModel, load_pipeline, start_pipeline
from engine.remote_engine import RemoteEngine, ServedModel, ServiceUnavailable
from engine.speed_book import SpeedBook
from model_store.loader import CpuTuning, ModelChoice
from model_store.store import ModelEntry

log = logging.getLogger(__name__)

# A conversation's budget where neither the settings nor the service say one: what the local engine derives for
# the default KV cache and batch (engine.context_policy.default_history_tokens) is larger; this keeps a third-party
# server's context safe.
ASSUMED_HISTORY_TOKENS = 3000


def generation_settings(settings: Settings) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        repetition_penalty=settings.repetition_penalty,
        system_prompt=settings.system_prompt,
        timeout_seconds=settings.request_timeout_seconds,
    )


def cpu_tuning(settings: Settings) -> CpuTuning:
    return CpuTuning(settings.dynamic_quantization_group_size, settings.inference_threads)


def model_choice(settings: Settings) -> ModelChoice:
    return ModelChoice(
        settings.store_dir,
        settings.model,
        settings.precision,
        settings.device,
        num_crops=settings.num_crops,
        views_dir=settings.views_dir,
        compile_cache_dir=settings.compile_cache_dir,
        kv_cache_gb=settings.kv_cache_gb,
        cpu=cpu_tuning(settings),
    )


def load_model(settings: Settings, entry: ModelEntry | None = None, speech: ModelEntry | None = None) -> LoadedModel:
    """Blocking: starts the model's process and compiles the model there (seconds)."""
    return load_pipeline(model_choice(settings).spec(entry, speech))


def start_model(settings: Settings, entry: ModelEntry | None = None) -> LoadedModel:
    """Blocking for a moment: picks the model (reading the store), starts its process, and leaves it loading."""
    return start_pipeline(model_choice(settings).spec(entry))


async def build_engine(settings: Settings, entry: ModelEntry | None = None, *, loaded: bool = True) -> Backend:
    """``entry``: a model to serve instead of the one chosen by the store and the settings.  ``loaded``: returns
    once the model is loaded (else at once, the model loading meanwhile: ``Engine.loaded``).  With a model
    service configured, a client of it, whether or not the service answers yet."""
    if settings.model_service_url is not None and entry is None:
        return await _service_client(settings, settings.model_service_url)
    model = await asyncio.to_thread(start_model, settings, entry)
    engine = Engine(
        model,
        generation_settings(settings),
        queue_max=settings.queue_max,
        batch_max=settings.batch_size,
        history_tokens=settings.history_tokens,
        speed_book=SpeedBook(settings.speeds_path),
    )
    if loaded:
        try:
            await engine.loaded()
        except BaseException:
            await engine.aclose()
            raise
    return engine


async def load_and_swap(
    engine: Engine, settings: Settings, entry: ModelEntry | None, *, speech: ModelEntry | None = None
) -> None:
    """Hot swap: load the new model beside the old one, switch at a request boundary; a failure keeps the old.
    ``entry``: the vision model (None: the one chosen); ``speech``: a speech model instead of the store's."""
    model = await asyncio.to_thread(load_model, settings, entry, speech)
    await engine.swap(model)


async def _service_client(settings: Settings, url: str) -> RemoteEngine:
    """Where the service says nothing of its model, it is planned for as the settings say (crops, history)."""
    tokens = settings.history_tokens or ASSUMED_HISTORY_TOKENS
    assumed = ServedModel(settings.model, settings.num_crops, tokens, tokens)
    key = settings.model_service_api_key
    token = settings.telegram_bot_token
    namespace = f"bot{token.get_secret_value().split(':')[0]}" if token is not None else "phi3bot"
    client = RemoteEngine(
        url,
        generation_settings(settings),
        namespace=namespace,
        assumed=assumed,
        api_key=key.get_secret_value() if key is not None else None,
    )
    try:
        served = await client.describe()
    except ServiceUnavailable as error:
        log.warning("the model service does not answer yet (%s); each question will try it", error.reason)
    else:
        log.info("asking the model service's %s", served.model_id)
    return client
