"""Where benchmark inputs live and how results are written: outside git, built once, reused by every script."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Hashable, Sequence

    import numpy as np

    from engine.backend import Backend
    from engine.conversation import Turn
    from engine.engine import Engine, Finished
    from model_store.loader import CpuTuning
    from model_store.store import ModelEntry

import psutil

BENCH_DIR = Path(os.environ.get("PHI3BOT_BENCH_DIR", Path.home() / ".cache" / "phi3bot-bench"))
RESULTS_DIR = Path(__file__).parent / "results"
SIMD_FLAGS = ("sse4", "avx", "amx", "fma", "f16c")


def machine() -> dict[str, Any]:
    cpu, flags = "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = sorted(flag for flag in line.split(":", 1)[1].split() if flag.startswith(SIMD_FLAGS))
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags,  # the vector instructions OpenVINO can use; they decide much of its speed
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def full_checkpoint() -> Path:
    """The full-size synthetic Phi-3.5-vision, built on first use (about a minute, 8.3 GB)."""
    from bot.terminal.progress import TerminalProgress
    from devkit.synthetic import build_synthetic_checkpoint

    path = BENCH_DIR / "full-checkpoint"
    if not (path / "synthetic.json").is_file():
        if path.exists():
            import shutil

            shutil.rmtree(path)
        build_synthetic_checkpoint(path, "full", progress=TerminalProgress())
    return path


def bot_cpu_tuning() -> CpuTuning:
    """The CPU options the bot ships with (its settings' defaults), so benchmarks time what users run."""
    from bot.settings import Settings
    from model_store.loader import CpuTuning

    fields = Settings.model_fields
    return CpuTuning(fields["dynamic_quantization_group_size"].default, fields["inference_threads"].default)


def add_dynamic_quantization_option(parser: argparse.ArgumentParser) -> None:
    default = bot_cpu_tuning().dynamic_quantization_group_size
    parser.add_argument(
        "--dynamic-quantization",
        type=int,
        default=default,
        help=f"DYNAMIC_QUANTIZATION_GROUP_SIZE, 0 = off (default: the bot's, {default})",
    )


def chosen_cpu_tuning(args: argparse.Namespace) -> CpuTuning:
    return dataclasses.replace(bot_cpu_tuning(), dynamic_quantization_group_size=args.dynamic_quantization)


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def model_from_arguments(description: str) -> Path:
    """``--model DIR``, a converted model directory, or else the full synthetic INT4."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, help="a converted model directory (default: the full synthetic INT4)")
    return parser.parse_args().model or full_int4_model()


def full_int4_model() -> Path:
    """The full synthetic checkpoint converted to INT4 (built and converted on first use, about 3.5 minutes)."""
    from bot.terminal.progress import TerminalProgress
    from model_store.convert import ConversionRequest, convert_in_subprocess
    from model_store.store import ModelStore

    checkpoint = full_checkpoint()
    store = ModelStore(BENCH_DIR / "store")
    for entry in store.entries():
        if entry.precision == "int4" and entry.source == str(checkpoint):
            return entry.path
    request = ConversionRequest(source=str(checkpoint), store_root=str(store.root), precision="int4", activate=True)
    return convert_in_subprocess(request, TerminalProgress()).path


def synthetic_photo(seed: int, width: int = 640, height: int = 480) -> np.ndarray:
    """A deterministic 'photo' (HWC uint8); content does not matter to a random-weight model, size does."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * seed) % 256, (y * 3) % 256, ((x + y) * seed) % 256], axis=-1).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    """A photo as a chat sends it: encoded bytes, which the bot (or bot.media.decoding.prepare_image) decodes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class TimedAnswer:
    first_text: float | None  # seconds to the first streamed text
    seconds: float  # seconds to the end of the answer
    finished: Finished


async def timed_answer(engine: Backend, key: Hashable, past: Sequence[Turn], question: Turn) -> TimedAnswer:
    """One answer through the engine (or a model service), timed as a chat sees it."""
    from engine.engine import Chunk, Finished

    started = time.monotonic()
    first: float | None = None
    finished: Finished | None = None
    async for event in engine.ask(key, past, question):
        if isinstance(event, Chunk) and first is None:
            first = time.monotonic() - started
        if isinstance(event, Finished):
            finished = event
    assert finished is not None, "every answer ends with Finished"
    return TimedAnswer(first, time.monotonic() - started, finished)


class FirstChunkTimer:
    """A GenAI streamer callback that notes when the first text arrives (time to first token)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first: float | None = None

    def __call__(self, _: str) -> bool:
        if self.first is None:
            self.first = time.monotonic() - self.started
        return False

    @property
    def ttft(self) -> float:
        return self.first if self.first is not None else float("nan")


async def bot_like_engine(
    model: Path, *, num_crops: int, answer_tokens: int, kv_cache_gb: float = 4, speech: ModelEntry | None = None
) -> Engine:
    """The engine as the bot runs it (its CPU options, batch size, KV cache and system prompt), on ``model``
    at ``num_crops``, writing every answer to ``answer_tokens`` tokens: a random-weight model otherwise stops
    anywhere; with ``speech``, that speech model beside it."""
    import asyncio

    from bot.settings import Settings
    from engine.engine import Engine
    from engine.generation import GenerationSettings
    from engine.pipeline_process import load_pipeline
    from model_store.loader import pipeline_spec
    from model_store.store import ModelEntry

    defaults = Settings.model_fields
    entry = ModelEntry(slug="bench", precision="int4", path=model, manifest={})
    spec = pipeline_spec(
        entry,
        kv_cache_gb=kv_cache_gb,
        cpu=bot_cpu_tuning(),
        num_crops=num_crops,
        views_dir=BENCH_DIR / "views",
        speech=speech,
    )
    settings = GenerationSettings(
        max_new_tokens=answer_tokens, system_prompt=str(defaults["system_prompt"].default), ignore_eos=True
    )
    return Engine(await asyncio.to_thread(load_pipeline, spec), settings, batch_max=defaults["batch_size"].default)
