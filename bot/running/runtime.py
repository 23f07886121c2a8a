"""Builds the engine from settings: pick the model, load it, wrap it; shared by the bot and the terminal modes."""

from __future__ import annotations

import asyncio
import logging

from bot.settings import Settings
from engine.engine import Engine
from engine.generation import GenerationSettings
from engine.pipeline_process import LoadedModel, load_pipeline
from model_store.loader import CpuTuning, pipeline_spec, select_entry
from model_store.store import ModelEntry, ModelStore

log = logging.getLogger(__name__)


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


def load_model(settings: Settings, entry: ModelEntry | None = None) -> LoadedModel:
    """Blocking: starts the model's process and compiles the model there (seconds)."""
    chosen = entry or select_entry(ModelStore(settings.store_dir), settings.model, settings.precision)
    spec = pipeline_spec(
        chosen,
        settings.device,
        views_dir=settings.views_dir,
        compile_cache_dir=settings.compile_cache_dir,
        num_crops=settings.num_crops,
        kv_cache_gb=settings.kv_cache_gb,
        cpu=cpu_tuning(settings),
    )
    return load_pipeline(spec)


async def build_engine(settings: Settings, entry: ModelEntry | None = None) -> Engine:
    """``entry``: a model to serve instead of the one chosen by the store and the settings."""
    model = await asyncio.to_thread(load_model, settings, entry)
    return Engine(
        model,
        generation_settings(settings),
        queue_max=settings.queue_max,
        batch_max=settings.batch_size,
        history_tokens=settings.history_tokens,
    )


async def load_and_swap(engine: Engine, settings: Settings, entry: ModelEntry) -> None:
    """Hot swap: load the new model beside the old one, switch at a request boundary; a failure keeps the old."""
    model = await asyncio.to_thread(load_model, settings, entry)
    await engine.swap(model)
