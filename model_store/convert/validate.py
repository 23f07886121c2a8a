"""Proof that a converted model really runs before it replaces the one serving: load it in the GenAI pipeline of
its kind and ask it something: a vision model about an image, a speech model to transcribe a sound."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model_store.errors import ValidationFailedError
from model_store.layout import SPEECH, check_ir_directory

log = logging.getLogger(__name__)

VALIDATION_TOKENS = 3


def sample_image(width: int = 448, height: int = 336) -> np.ndarray:
    """A deterministic picture (gradients and a square) in HWC uint8, the layout GenAI takes."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    image[height // 4 : height // 2, width // 4 : width // 2] = (255, 255, 255)
    return image.astype(np.uint8)


def sample_sound(seconds: float = 2.0, rate: int = 16000) -> np.ndarray:
    """A deterministic sound (a tone rising and falling in loudness), 16 kHz mono float32 as Whisper takes it."""
    time_points = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * time_points) * np.sin(np.pi * time_points / seconds)).astype(np.float32)


def validate_model(directory: Path, device: str = "CPU") -> dict[str, float | int]:
    """Load ``directory`` in the pipeline of its kind and generate a few tokens; raise if anything fails."""
    import openvino_genai as genai

    if check_ir_directory(directory) is SPEECH:
        return _tried(directory, lambda: genai.WhisperPipeline(str(directory), device), _transcribe)
    return _tried(directory, lambda: genai.VLMPipeline(str(directory), device), _describe)


def _describe(pipeline: Any) -> tuple[int, dict[str, int]]:
    import openvino as ov
    import openvino_genai as genai

    config = genai.GenerationConfig()
    config.max_new_tokens = VALIDATION_TOKENS
    config.ignore_eos = True
    chunks: list[str] = []

    def collect(chunk: str) -> bool:
        chunks.append(chunk)
        return False

    result = pipeline.generate(
        "What is in this image?", images=[ov.Tensor(sample_image())], generation_config=config, streamer=collect
    )
    return int(result.perf_metrics.get_num_generated_tokens()), {
        "input_tokens": int(result.perf_metrics.get_num_input_tokens())
    }


def _transcribe(pipeline: Any) -> tuple[int, dict[str, int]]:
    """Random weights may write only timestamps, which are tokens as well."""
    config = pipeline.get_generation_config()
    config.max_new_tokens = VALIDATION_TOKENS
    result = pipeline.generate(sample_sound().tolist(), config)
    return int(result.perf_metrics.get_num_generated_tokens()), {}


def _tried(
    directory: Path, load: Callable[[], Any], ask: Callable[[Any], tuple[int, dict[str, int]]]
) -> dict[str, float | int]:
    """The pipeline ``load`` makes, asked by ``ask`` (tokens generated, and what else it measured), timed."""
    try:
        started = time.monotonic()
        pipeline = load()
        loaded = time.monotonic()
        generated, measured = ask(pipeline)
    except Exception as error:
        raise ValidationFailedError("did_not_run", error=str(error)) from error
    if generated < 1:
        raise ValidationFailedError("no_tokens")
    finished = time.monotonic()
    log.info("validated %s: %d tokens generated (%s)", directory, generated, measured)
    return {
        "load_seconds": round(loaded - started, 2),
        "generate_seconds": round(finished - loaded, 2),
        **measured,
        "generated_tokens": generated,
    }
