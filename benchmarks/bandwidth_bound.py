"""How close decoding gets to this machine's limit: memory bandwidth / weight bytes read per token.

Generating one token reads every weight of the language model once (the KV cache is small at these lengths),
so ``bandwidth / language-model bytes`` is a ceiling on tokens/s that no software can beat on this CPU.
Measured here: read bandwidth with 1 thread and with every core, the full synthetic INT4 model's language
model size, and its decode speed in OpenVINO GenAI (64 new tokens after a short text prompt).

Usage: python benchmarks/bandwidth_bound.py
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import full_int4_model, write_results

ARRAY_BYTES = 1 << 30  # far larger than any cache
REPEATS = 5


def read_bandwidth(threads: int) -> float:
    """GB/s of summing a 1 GiB array split across ``threads`` (numpy releases the GIL in reductions)."""
    data = np.ones(ARRAY_BYTES // 8, dtype=np.float64)
    chunks = np.array_split(data, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(REPEATS):
            started = time.perf_counter()
            list(pool.map(np.sum, chunks))
            best = max(best, ARRAY_BYTES / (time.perf_counter() - started) / 1e9)
    return best


def decode_speed(model: Path, tokens: int = 64, properties: dict[str, Any] | None = None) -> float:
    """Tokens/s after a short text prompt; ``properties``: CPU options (OpenVINO's defaults when None)."""
    import openvino_genai as genai

    pipeline = genai.VLMPipeline(str(model), "CPU", **(properties or {}))
    config = genai.GenerationConfig()
    config.max_new_tokens = tokens
    config.ignore_eos = True
    pipeline.generate("Hello", generation_config=config)  # compilation and first-call work
    metrics = pipeline.generate("Tell me about the sea.", generation_config=config).perf_metrics
    return 1000.0 / metrics.get_tpot().mean


def main() -> None:
    model = full_int4_model()
    language_model = model / "openvino_language_model.bin"
    weight_bytes = language_model.stat().st_size
    cores = os.cpu_count() or 1
    bandwidth = {"1 thread": read_bandwidth(1), f"{cores} threads": read_bandwidth(cores)}
    best = max(bandwidth.values())
    ceiling = best * 1e9 / weight_bytes
    measured = decode_speed(model)
    rows: dict[str, Any] = {
        "read_bandwidth_gb_s": {name: round(value, 1) for name, value in bandwidth.items()},
        "language_model_bytes": weight_bytes,
        "ceiling_tokens_per_second": round(ceiling, 2),
        "decode_tokens_per_second": round(measured, 2),
        "share_of_ceiling": round(measured / ceiling, 3),
    }
    for name, value in bandwidth.items():
        print(f"read bandwidth, {name:>10}: {value:6.1f} GB/s")
    print(f"language model weights:      {weight_bytes / 1e9:6.2f} GB read per generated token")
    print(f"ceiling:                     {ceiling:6.2f} tokens/s")
    print(f"OpenVINO GenAI decode:       {measured:6.2f} tokens/s = {100 * measured / ceiling:.0f} % of the ceiling")
    print(f"results: {write_results('bandwidth_bound', rows)}")


if __name__ == "__main__":
    main()
