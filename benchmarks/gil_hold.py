"""Can the bot's event loop keep running while GenAI works on another thread?  Measured, per GenAI call.

A Python thread ticks every 10 ms while each call runs on the main thread; the longest gap between ticks is
how long the call held the GIL (a bot's event loop would be frozen that long).  Calls: the continuous-batching
pipeline's ``add_request`` with a photo and its ``step`` loop (the way to batch several chats), and
``VLMPipeline.generate`` (what the engine uses).

Usage: python benchmarks/gil_hold.py
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bot_cpu_tuning, full_int4_model, synthetic_photo, write_results
from model_store.loader import prefix_caching_scheduler


class Ticker:
    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            time.sleep(0.01)
            now = time.monotonic()
            self.gaps.append(now - last)
            last = now

    def measure(self, name: str, call: Callable[[], Any]) -> dict[str, Any]:
        self.gaps.clear()
        started = time.monotonic()
        call()
        row = {"call": name, "seconds": round(time.monotonic() - started, 1), "longest_gap": round(max(self.gaps), 2)}
        print(f"{name:<45} {row['seconds']:6.1f} s, event loop frozen up to {row['longest_gap']:.2f} s", flush=True)
        return row

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def batching_rows(model: str, properties: dict[str, Any], config: Any, image: Any, ticker: Ticker) -> list[dict]:
    import openvino_genai as genai

    pipeline = genai.ContinuousBatchingPipeline(model, prefix_caching_scheduler(2), "CPU", properties)
    handles = []  # a handle that is dropped stops its request

    def add() -> None:
        handles.append(pipeline.add_request(1, "Describe this photo.", [image], config))

    def steps() -> None:
        while pipeline.has_non_finished_requests():
            pipeline.step()

    return [
        ticker.measure("ContinuousBatchingPipeline.add_request", add),
        ticker.measure("ContinuousBatchingPipeline.step loop", steps),
    ]


def main() -> None:
    import openvino as ov
    import openvino_genai as genai

    model = str(full_int4_model())
    properties = bot_cpu_tuning().properties()
    config = genai.GenerationConfig()
    config.max_new_tokens = 8
    config.ignore_eos = True
    image = ov.Tensor(synthetic_photo(21))
    ticker = Ticker()
    rows = batching_rows(model, properties, config, image, ticker)
    pipeline = genai.VLMPipeline(model, "CPU", **properties)

    def generate() -> None:
        pipeline.generate("Describe this photo.", images=[image], generation_config=config)

    rows.append(ticker.measure("VLMPipeline.generate", generate))
    ticker.close()
    print(f"results: {write_results('gil_hold', {'rows': rows})}")


if __name__ == "__main__":
    main()
