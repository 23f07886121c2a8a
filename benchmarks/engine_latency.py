"""Engine against raw OpenVINO GenAI on the full-size synthetic Phi-3.5-vision INT4 (issue 3's goal).

The scenario is the one that matters in a group of chats: chat A asks about a photo and follows up, chat B
asks about another photo, then A and B take turns with follow-ups, each one after the other chat's answer.
Printed per variant: cold image TTFT, follow-up TTFT in the same chat, every follow-up after another chat
with their median (goal: 2 s or less), and decode tokens/s.  The raw variants also count the answer tokens
that do not survive detokenising and tokenising again: the next follow-up reads those again.

Usage: python benchmarks/engine_latency.py [--tokens 32] [--rounds 3] [--variants engine,raw-plain]
       [--dynamic-quantization N] [--name engine_latency]
Each variant runs in its own process so memory and caches do not leak between them; every variant uses the
bot's CPU options unless told otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    add_dynamic_quantization_option,
    chosen_cpu_tuning,
    full_int4_model,
    png,
    synthetic_photo,
    timed_answer,
    write_results,
)
from model_store.loader import CpuTuning, prefix_caching_scheduler

VARIANTS = ("raw-plain", "raw-prefix-cache", "engine")
OPENING = ("A1 image", "A2 follow-up", "B1 image")
PHOTOS = {"A1 image": 3, "B1 image": 7}


def _steps(rounds: int) -> list[str]:
    """The opening, then the two chats taking turns: every later step is a follow-up after another chat."""
    steps = list(OPENING)
    for n in range(rounds):
        steps += [f"A{n + 3} follow-up after B", f"B{n + 2} follow-up after A"]
    return steps


def _question(step: str) -> str:
    return "What is in this image?" if step in PHOTOS else f"Question {step[:2]}: what else can you tell me?"


def _after_other_chat(steps: list[str]) -> list[str]:
    return [step for step in steps if step not in OPENING]


def _raw(model: Path, prefix_cache: bool, tokens: int, cpu: CpuTuning, steps: list[str]) -> dict[str, Any]:
    import openvino as ov
    import openvino_genai as genai

    class Recorder(genai.StreamerBase):  # type: ignore[misc]
        """Times the first token and the first text (GenAI's TextStreamer holds back a few tokens, as in the
        engine), and keeps every token id to count what the next follow-up reads again."""

        def __init__(self, tokenizer: Any) -> None:
            super().__init__()
            self.started = time.monotonic()
            self.first_token: float | None = None
            self.first_text: float | None = None
            self.ids: list[int] = []
            self._text = genai.TextStreamer(tokenizer, self._on_text)

        def _on_text(self, _: str) -> genai.StreamingStatus:
            if self.first_text is None:
                self.first_text = time.monotonic() - self.started
            return genai.StreamingStatus.RUNNING

        def write(self, token: int | list[int]) -> genai.StreamingStatus:
            if self.first_token is None:
                self.first_token = time.monotonic() - self.started
            self.ids += token if isinstance(token, list) else [token]
            return self._text.write(token)

        def end(self) -> None:
            self._text.end()

    properties: dict[str, Any] = cpu.properties()
    if prefix_cache:
        properties["scheduler_config"] = prefix_caching_scheduler(4)
    started = time.monotonic()
    pipeline = genai.VLMPipeline(str(model), "CPU", **properties)
    tokenizer = pipeline.get_tokenizer()
    results: dict[str, Any] = {"load_seconds": round(time.monotonic() - started, 2)}
    config = genai.GenerationConfig()
    config.max_new_tokens = tokens
    config.ignore_eos = True
    histories = {"A": genai.ChatHistory(), "B": genai.ChatHistory()}
    warm = genai.ChatHistory()
    warm.append({"role": "user", "content": "Hello"})
    pipeline.generate(warm, images=[], generation_config=config)
    for step in steps:
        history = histories[step[0]]
        history.append({"role": "user", "content": _question(step)})
        recorder = Recorder(tokenizer)
        tensors = [ov.Tensor(synthetic_photo(PHOTOS[step]))] if step in PHOTOS else []
        result = pipeline.generate(history, images=tensors, generation_config=config, streamer=recorder)
        total = time.monotonic() - recorder.started
        history.append({"role": "assistant", "content": result.texts[0]})
        generated = int(result.perf_metrics.get_num_generated_tokens())
        ttft = recorder.first_text if recorder.first_text is not None else float("nan")
        first_token = recorder.first_token if recorder.first_token is not None else float("nan")
        results[step] = {
            "ttft": round(ttft, 2),
            "first_token": round(first_token, 2),
            "decode_tps": round((generated - 1) / (total - ttft), 2),
            "input_tokens": int(result.perf_metrics.get_num_input_tokens()),
            "answer_tokens_not_round_tripping": _not_round_tripping(tokenizer, result.texts[0], recorder.ids),
        }
    return results


def _not_round_tripping(tokenizer: Any, text: str, ids: list[int]) -> int:
    """How many of an answer's tokens there are from the first that comes back different once the answer's text
    is tokenised again in the chat template.

    The next prompt's prefix-cache match ends there, so the next follow-up reads these tokens again.
    Random weights emit lone UTF-8 byte tokens whose text does not survive; a real model's answers do.
    """
    before = tokenizer.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True)
    after = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}], add_generation_prompt=False
    )
    prefix = list(tokenizer.encode(before, add_special_tokens=False).input_ids.data[0])
    again = [int(i) for i in tokenizer.encode(after, add_special_tokens=False).input_ids.data[0]][len(prefix) :]
    same = 0
    for old, new in zip(ids, again, strict=False):
        if old != new:
            break
        same += 1
    return len(ids) - same


async def _engine(model: Path, tokens: int, cpu: CpuTuning, steps: list[str]) -> dict[str, Any]:

    from bot.media.decoding import prepare_image
    from engine.conversation import Turn
    from engine.engine import Engine
    from engine.generation import GenerationSettings
    from engine.pipeline_process import load_pipeline
    from model_store.loader import pipeline_spec
    from model_store.store import ModelEntry

    entry = ModelEntry(slug="bench", precision="int4", path=model, manifest={})
    started = time.monotonic()
    spec = pipeline_spec(entry, kv_cache_gb=4, cpu=cpu)
    loaded = await asyncio.to_thread(load_pipeline, spec)
    results: dict[str, Any] = {"load_seconds": round(time.monotonic() - started, 2)}
    engine = Engine(loaded, GenerationSettings(max_new_tokens=tokens, system_prompt="", ignore_eos=True))
    histories: dict[str, list[Turn]] = {"A": [], "B": []}
    encoded = {step: prepare_image(png(synthetic_photo(seed))) for step, seed in PHOTOS.items()}
    await timed_answer(engine, "warm", [], Turn(role="user", text="Hello"))
    for step in steps:
        chat = step[0]
        question = Turn(role="user", text=_question(step), images=(encoded[step],) if step in encoded else ())
        answer = await timed_answer(engine, chat, histories[chat], question)
        finished = answer.finished
        assert finished.status == "complete", finished
        histories[chat] += [question, Turn(role="assistant", text=finished.text)]
        results[step] = {
            "ttft": round(answer.first_text or 0.0, 2),
            "decode_tps": round(finished.tokens_per_second or 0.0, 2),
            "input_tokens": finished.report.input_tokens,
        }
    await engine.aclose()
    return results


def _run_variant(variant: str, tokens: int, cpu: CpuTuning, steps: list[str]) -> dict[str, Any]:
    model = full_int4_model()
    if variant == "engine":
        return asyncio.run(_engine(model, tokens, cpu, steps))
    return _raw(model, variant == "raw-prefix-cache", tokens, cpu, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="turns each chat takes after the opening")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    add_dynamic_quantization_option(parser)
    parser.add_argument("--name", default="engine_latency", help="results file name")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpu = chosen_cpu_tuning(args)
    steps = _steps(args.rounds)
    if args.variant:
        print(json.dumps(_run_variant(args.variant, args.tokens, cpu, steps)))
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    full_int4_model()  # build and convert once, before timing anything
    results: dict[str, Any] = {}
    for variant in variants:
        print(f"running {variant} ...", flush=True)
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--tokens",
                str(args.tokens),
                "--rounds",
                str(args.rounds),
                "--dynamic-quantization",
                str(args.dynamic_quantization),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    header = f"{'step':<24}" + "".join(f"{v:>22}" for v in variants)
    print("\ntime to first text in seconds (decode tokens/s)\n" + header)
    for step in steps:
        row = f"{step:<24}"
        for variant in variants:
            cell = results[variant][step]
            row += f"{cell['ttft']:>12.2f} ({cell['decode_tps']:>5.1f})   "
        print(row)
    print(f"{'load seconds':<24}" + "".join(f"{results[v]['load_seconds']:>22.1f}" for v in variants))
    print("\nfollow-up after another chat (goal: 2 s or less), median and slowest of", len(_after_other_chat(steps)))
    summary: dict[str, dict[str, float]] = {}
    for variant in variants:
        times = [results[variant][step]["ttft"] for step in _after_other_chat(steps)]
        summary[variant] = {"median": round(statistics.median(times), 2), "max": max(times)}
        print(f"  {variant:<18} {summary[variant]['median']:.2f} s, slowest {summary[variant]['max']:.2f} s")
    for variant in variants:
        counts = [results[variant][step].get("answer_tokens_not_round_tripping") for step in steps]
        if None not in counts:
            print(
                f"  {variant}: answer tokens read again on the next follow-up (random weights' text does not "
                f"round-trip): {counts} of {args.tokens} each"
            )
    settings = {"tokens": args.tokens, "rounds": args.rounds, "cpu": cpu.properties()}
    print(f"results: {write_results(args.name, {**settings, 'variants': results, 'after_other_chat': summary})}")


if __name__ == "__main__":
    main()
