"""Hands the bot a ready OpenVINO GenAI pipeline for the configured (or admin-chosen) model.

OpenVINO's model cache (``CACHE_DIR``) keeps compiled blobs, keyed by the model's content, so a restart need not
compile again.  That pays on GPUs; on a CPU compiling is quick and reading the blobs back measured slower
(benchmarks/load_time.py), so the bot turns the cache on by device (bot.settings).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store.errors import MissingModelError, ModelStoreError
from model_store.layout import SPEECH, VISION, check_ir_directory, read_json
from model_store.sources import parse_source
from model_store.store import ModelEntry, ModelStore

log = logging.getLogger(__name__)

DEVICES = ("CPU", "GPU", "AUTO")


@dataclass(frozen=True)
class CpuTuning:
    """OpenVINO CPU options worth exposing (benchmarks/cpu_options.py measures them); None = OpenVINO's choice.

    A larger dynamic-quantization group speeds up prompt processing (time to first token) and slows decoding
    a little; fewer threads leave cores to other services on a shared box.
    """

    dynamic_quantization_group_size: int | None = None
    threads: int | None = None

    def properties(self) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        if self.dynamic_quantization_group_size is not None:
            chosen["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = self.dynamic_quantization_group_size
        if self.threads is not None:
            chosen["INFERENCE_NUM_THREADS"] = self.threads
        return chosen


def normalise_device(device: str) -> str:
    """Accept ``CPU``, ``GPU``, ``GPU.1``, ``AUTO`` and ``AUTO:GPU,CPU``, in any case."""
    value = device.strip().upper()
    if value.split(".", 1)[0].split(":", 1)[0] not in DEVICES:
        raise ValueError(f"unknown device {device!r}; use CPU, GPU or AUTO")
    return value


def select_entry(store: ModelStore, model: str, precision: str) -> ModelEntry:
    """The admin's last choice (active.json) wins over the configured default, so /convert survives restarts."""
    entry = chosen_entry(store, VISION.name)
    if entry is not None:
        return entry
    slug = parse_source(model).slug if Path(model).expanduser().is_dir() or "/" in model else model
    entry = store.entry(slug, precision)
    if entry is None:
        available = [(e.source, e.precision) for e in store.entries() if e.kind == VISION.name]
        raise MissingModelError(
            "not_converted", model=model, precision=precision, root=str(store.root), available=available
        )
    return entry


def crops_view(entry: ModelEntry, num_crops: int, views_dir: Path) -> Path:
    """The model as GenAI should see it with ``num_crops`` image crops.

    GenAI reads ``num_crops`` only from preprocessor_config.json, and store entries are immutable, so a
    different setting gets a view: a directory of symlinks to the model's files with its own copy of that
    one file.  Views are cheap and rebuilt whenever the entry changes.
    """
    config = read_json(entry.path / "preprocessor_config.json")
    if int(config.get("num_crops", 4)) == num_crops:
        return entry.path
    view = views_dir / f"{entry.path.parent.name}-{entry.path.name.lstrip('.')}-crops{num_crops}"
    if not (view / "preprocessor_config.json").is_file():
        staging = view.with_name(view.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        lay_out_with_crops(entry.path, staging, num_crops, Path.symlink_to)
        shutil.rmtree(view, ignore_errors=True)
        staging.rename(view)
    return view


def lay_out_with_crops(source: Path, target: Path, num_crops: int | None, link: Callable[[Path, Path], object]) -> None:
    """The model's files in the new directory ``target``, each placed by ``link(placed, original)``, except
    preprocessor_config.json, written there with ``num_crops`` (kept as is for None): GenAI reads the setting
    only from that file, and the store's entries are never changed in place."""
    config = read_json(source / "preprocessor_config.json")
    if num_crops is not None:
        config["num_crops"] = num_crops
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and item.name != "preprocessor_config.json":
            link(target / item.name, item)
    (target / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


@dataclass(frozen=True)
class PipelineSpec:
    """What to compile and how, as plain values: the model is compiled in the engine's own process."""

    entry: ModelEntry
    path: Path  # the entry itself, or a view of it with another num_crops
    device: str
    properties: dict[str, Any]
    kv_cache_gb: float
    num_crops: int
    speech: ModelEntry | None = None  # the speech model loaded beside it (voice questions), if the store has one


def pipeline_spec(
    entry: ModelEntry,
    device: str = "CPU",
    *,
    views_dir: Path | None = None,
    compile_cache_dir: Path | None = None,
    num_crops: int | None = None,
    kv_cache_gb: float = 4.0,
    cpu: CpuTuning | None = None,
    speech: ModelEntry | None = None,
) -> PipelineSpec:
    """Checks the models' files first, so a damaged entry is named before any process is started.

    ``views_dir`` is where a view for another ``num_crops`` than the model's own is made (see crops_view).
    """
    check_ir_directory(entry.path, VISION)
    if speech is not None:
        check_ir_directory(speech.path, SPEECH)
    properties: dict[str, Any] = cpu.properties() if cpu is not None else {}
    if compile_cache_dir is not None:
        compile_cache_dir.mkdir(parents=True, exist_ok=True)
        properties["CACHE_DIR"] = str(compile_cache_dir)
    path = entry.path
    if num_crops is None:
        num_crops = int(read_json(path / "preprocessor_config.json").get("num_crops", 4))
    elif views_dir is None:
        raise ValueError("a views_dir is needed to choose num_crops")
    else:
        path = crops_view(entry, num_crops, views_dir)
    return PipelineSpec(entry, path, normalise_device(device), properties, kv_cache_gb, num_crops, speech)


@dataclass(frozen=True)
class ModelChoice:
    """Which converted model to serve and how to compile it, as plain values: from the bot's settings, or sent
    to each replica of a model service (no secret among them)."""

    store_dir: Path
    model: str  # as MODEL names it; the store's active model wins (select_entry)
    precision: str
    device: str = "CPU"
    num_crops: int | None = None  # None: the model's own
    views_dir: Path | None = None  # needed for another num_crops than the model's own
    compile_cache_dir: Path | None = None
    kv_cache_gb: float = 4.0
    cpu: CpuTuning | None = None

    def spec(self, entry: ModelEntry | None = None, speech: ModelEntry | None = None) -> PipelineSpec:
        """``entry``: a model to serve instead of the one the store and the choice select; the store's speech
        model, if it has one, is loaded beside it, or ``speech`` instead."""
        store = ModelStore(self.store_dir)
        chosen = entry or select_entry(store, self.model, self.precision)
        return pipeline_spec(
            chosen,
            self.device,
            views_dir=self.views_dir,
            compile_cache_dir=self.compile_cache_dir,
            num_crops=self.num_crops,
            kv_cache_gb=self.kv_cache_gb,
            cpu=self.cpu,
            speech=speech or chosen_entry(store, SPEECH.name),
        )


def chosen_entry(store: ModelStore, kind: str) -> ModelEntry | None:
    """The store's model of ``kind`` chosen last (active.json, active-speech.json), while it is there."""
    chosen = store.active(kind)
    entry = store.entry(chosen.slug, chosen.precision) if chosen is not None else None
    if chosen is not None and entry is None:
        log.warning("the %s model chosen earlier (%s, %s) is gone", kind, chosen.source, chosen.precision)
    return entry


def kv_cache_size_gb(kv_cache_gb: float) -> int:
    """KV_CACHE_GB as GenAI's scheduler takes it: whole gigabytes, at least one, or 0 (grown as needed)."""
    return max(1, round(kv_cache_gb)) if kv_cache_gb else 0


def prefix_caching_scheduler(kv_cache_gb: float) -> Any:
    """GenAI's scheduler with prefix caching, KV blocks bounded by ``kv_cache_gb`` (0: grown as needed)."""
    import openvino_genai as genai

    scheduler = genai.SchedulerConfig()
    scheduler.enable_prefix_caching = True
    scheduler.cache_size = kv_cache_size_gb(kv_cache_gb)
    return scheduler


def compile_speech(spec: PipelineSpec) -> Any:
    """An ``openvino_genai.WhisperPipeline`` of the spec's speech model, on its device with its CPU options."""
    import openvino_genai as genai

    assert spec.speech is not None
    try:
        return genai.WhisperPipeline(str(spec.speech.path), spec.device, **spec.properties)
    except RuntimeError as error:
        speech = spec.speech
        raise ModelStoreError(
            "not_loaded", source=speech.source, precision=speech.precision, device=spec.device, error=str(error)
        ) from error


def compile_pipeline(spec: PipelineSpec) -> Any:
    """An ``openvino_genai.ContinuousBatchingPipeline`` with prefix caching; errors name the model and a fix.

    Prefix caching keeps each conversation's KV blocks while other chats are answered; ``kv_cache_gb`` bounds
    them (0 lets GenAI grow the cache as needed).
    """
    import openvino_genai as genai

    scheduler = prefix_caching_scheduler(spec.kv_cache_gb)
    entry = spec.entry
    try:
        return genai.ContinuousBatchingPipeline(str(spec.path), scheduler, spec.device, spec.properties)
    except RuntimeError as error:
        raise ModelStoreError(
            "not_loaded", source=entry.source, precision=entry.precision, device=spec.device, error=str(error)
        ) from error
