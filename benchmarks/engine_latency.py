"""Engine against raw OpenVINO GenAI on the full-size synthetic Phi-3.5-vision INT4 (issue 3's goal).

The scenario is the one that matters in a group of chats: chat A asks about a photo, asks a follow-up,
chat B asks about another photo, then A follows up again.  Printed per variant: cold image TTFT, follow-up
TTFT in the same chat, follow-up TTFT after another chat (goal: 2 s or less), and decode tokens/s.

Usage: python benchmarks/engine_latency.py [--tokens 32] [--variants engine,raw-plain]
       [--dynamic-quantization 64] [--name engine_latency]
Each variant runs in its own process so memory and caches do not leak between them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import FirstChunkTimer, full_int4_model, synthetic_photo, write_results
from model_store.loader import CpuTuning

VARIANTS = ("raw-plain", "raw-prefix-cache", "engine")
STEPS = ("A1 image", "A2 follow-up", "B1 image", "A3 follow-up after B")
QUESTIONS = {
    "A1 image": "What is in this image?",
    "A2 follow-up": "And what colour is it?",
    "B1 image": "Describe this photo.",
    "A3 follow-up after B": "Anything else in it?",
}


def _raw(model: Path, prefix_cache: bool, tokens: int, cpu: CpuTuning) -> dict[str, Any]:
    import openvino as ov
    import openvino_genai as genai

    properties: dict[str, Any] = cpu.properties()
    if prefix_cache:
        scheduler = genai.SchedulerConfig()
        scheduler.enable_prefix_caching = True
        scheduler.cache_size = 4
        properties["scheduler_config"] = scheduler
    started = time.monotonic()
    pipeline = genai.VLMPipeline(str(model), "CPU", **properties)
    results: dict[str, Any] = {"load_seconds": round(time.monotonic() - started, 2)}
    config = genai.GenerationConfig()
    config.max_new_tokens = tokens
    config.ignore_eos = True
    histories = {"A": genai.ChatHistory(), "B": genai.ChatHistory()}
    images = {"A1 image": synthetic_photo(3), "B1 image": synthetic_photo(7)}
    warm = genai.ChatHistory()
    warm.append({"role": "user", "content": "Hello"})
    pipeline.generate(warm, images=[], generation_config=config)
    for step in STEPS:
        history = histories[step[0]]
        history.append({"role": "user", "content": QUESTIONS[step]})
        timer = FirstChunkTimer()
        tensors = [ov.Tensor(images[step])] if step in images else []
        result = pipeline.generate(history, images=tensors, generation_config=config, streamer=timer)
        total = time.monotonic() - timer.started
        history.append({"role": "assistant", "content": result.texts[0]})
        generated = int(result.perf_metrics.get_num_generated_tokens())
        results[step] = {
            "ttft": round(timer.ttft, 2),
            "decode_tps": round((generated - 1) / (total - timer.ttft), 2),
            "input_tokens": int(result.perf_metrics.get_num_input_tokens()),
        }
    return results


async def _engine(model: Path, tokens: int, cpu: CpuTuning) -> dict[str, Any]:
    from PIL import Image

    from engine.conversation import Turn
    from engine.engine import Chunk, Engine, Finished
    from engine.generation import GenerationSettings
    from engine.images import prepare_image
    from engine.pipeline_process import load_pipeline
    from model_store.loader import pipeline_spec
    from model_store.store import ModelEntry

    entry = ModelEntry(slug="bench", precision="int4", path=model, manifest={})
    started = time.monotonic()
    spec = pipeline_spec(entry, "CPU", None, kv_cache_gb=4, cpu=cpu)
    loaded = await asyncio.to_thread(load_pipeline, spec)
    results: dict[str, Any] = {"load_seconds": round(time.monotonic() - started, 2)}
    engine = Engine(loaded, GenerationSettings(max_new_tokens=tokens, system_prompt="", ignore_eos=True))
    histories: dict[str, list[Turn]] = {"A": [], "B": []}
    encoded = {}
    for step, seed in (("A1 image", 3), ("B1 image", 7)):
        buffer = io.BytesIO()
        Image.fromarray(synthetic_photo(seed)).save(buffer, format="PNG")
        encoded[step] = prepare_image(buffer.getvalue())
    async for _ in engine.ask("warm", [], Turn(role="user", text="Hello")):
        pass
    for step in STEPS:
        chat = step[0]
        question = Turn(role="user", text=QUESTIONS[step], images=(encoded[step],) if step in encoded else ())
        begin = time.monotonic()
        first: float | None = None
        finished: Finished | None = None
        async for event in engine.ask(chat, histories[chat], question):
            if isinstance(event, Chunk) and first is None:
                first = time.monotonic() - begin
            if isinstance(event, Finished):
                finished = event
        assert finished is not None and finished.status == "complete", finished
        histories[chat] += [question, Turn(role="assistant", text=finished.text)]
        results[step] = {
            "ttft": round(first or 0.0, 2),
            "decode_tps": round(finished.tokens_per_second or 0.0, 2),
            "input_tokens": finished.input_tokens,
        }
    await engine.aclose()
    return results


def _run_variant(variant: str, tokens: int, cpu: CpuTuning) -> dict[str, Any]:
    model = full_int4_model()
    if variant == "engine":
        return asyncio.run(_engine(model, tokens, cpu))
    return _raw(model, variant == "raw-prefix-cache", tokens, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    parser.add_argument("--dynamic-quantization", type=int, help="DYNAMIC_QUANTIZATION_GROUP_SIZE for every variant")
    parser.add_argument("--name", default="engine_latency", help="results file name")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpu = CpuTuning(dynamic_quantization_group_size=args.dynamic_quantization)
    if args.variant:
        print(json.dumps(_run_variant(args.variant, args.tokens, cpu)))
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    full_int4_model()  # build and convert once, before timing anything
    results: dict[str, Any] = {}
    extra = ["--dynamic-quantization", str(args.dynamic_quantization)] if args.dynamic_quantization is not None else []
    for variant in variants:
        print(f"running {variant} ...", flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens), *extra],
            capture_output=True,
            text=True,
            check=True,
        )
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    header = f"{'step':<22}" + "".join(f"{v:>22}" for v in variants)
    print("\nTTFT in seconds (decode tokens/s)\n" + header)
    for step in STEPS:
        row = f"{step:<22}"
        for variant in variants:
            cell = results[variant][step]
            row += f"{cell['ttft']:>12.2f} ({cell['decode_tps']:>5.1f})   "
        print(row)
    print(f"{'load seconds':<22}" + "".join(f"{results[v]['load_seconds']:>22.1f}" for v in variants))
    if "engine" in results:
        goal = results["engine"]["A3 follow-up after B"]["ttft"]
        print(f"\nengine: follow-up after another chat starts in {goal:.2f} s (goal: 2 s or less)")
    settings = {"tokens": args.tokens, "dynamic_quantization_group_size": args.dynamic_quantization}
    print(f"results: {write_results(args.name, {**settings, 'variants': results})}")


if __name__ == "__main__":
    main()
