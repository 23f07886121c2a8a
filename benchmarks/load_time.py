"""How long the engine's model takes to load, with and without OpenVINO's model cache and a reserved KV cache.

Usage: python benchmarks/load_time.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bot_cpu_tuning, full_int4_model, write_results
from engine.pipeline_process import load_pipeline
from model_store.loader import pipeline_spec
from model_store.store import ModelEntry


def main() -> None:
    entry = ModelEntry(slug="bench", precision="int4", path=full_int4_model(), manifest={})
    cpu = bot_cpu_tuning()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name, cache_dir, kv_cache_gb in (
            ("no model cache, no KV reservation", None, 0),
            ("no model cache, 4 GB KV cache", None, 4),
            ("model cache being written, 4 GB KV cache", Path(cache), 4),
            ("model cache warm, 4 GB KV cache", Path(cache), 4),
            ("model cache warm, 4 GB KV cache, again", Path(cache), 4),
        ):
            started = time.monotonic()
            loaded = load_pipeline(pipeline_spec(entry, compile_cache_dir=cache_dir, kv_cache_gb=kv_cache_gb, cpu=cpu))
            seconds = time.monotonic() - started
            loaded.pipeline.close()
            rows.append({"load": name, "seconds": round(seconds, 1)})
            print(f"{name:<45} {seconds:5.1f} s", flush=True)
    print(f"results: {write_results('load_time', {'rows': rows})}")


if __name__ == "__main__":
    main()
