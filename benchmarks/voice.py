"""Voice questions on this machine: how long the speech model takes to write a voice message down, what a spoken
follow-up costs over a typed one, and what the speech model adds to the model's process.

1. Transcription: synthetic Whisper base and small (OpenAI's sizes and vocabulary, random weights), converted by the
   project (INT8, its default), in GenAI's WhisperPipeline with the bot's CPU options: 5, 15 and 60 s of sound,
   each written to ``TOKENS_PER_SECOND`` tokens a second of speech (a random-weight model otherwise writes until
   its limit; English speech is about 2.5 words a second), best of ``REPEATS``; real-time factor = time / length.
2. In the engine as the bot runs it: the full-size synthetic Phi-3.5-vision INT4 with whisper-base beside it in
   one model process; a conversation about a photo whose follow-ups are asked aloud (15 s each), and one about
   another photo whose follow-ups are the same words typed, each answer written to ``ANSWER_TOKENS`` tokens:
   seconds to the first words, the spoken ones' transcription included.  (A random-weight Whisper writes gibberish
   up to the engine's cap on a transcript's length, which the language model then reads as a long question; the
   typed conversation reads the same.)
3. Memory: the model process's resident memory after the same photo question, with and without the speech model.

Goal: a 15 s voice message written down in at most 1.5 s with whisper-base (real-time factor 0.1), and a spoken
follow-up at most that much slower than a typed one.

Usage: python benchmarks/voice.py [--sizes base,small] [--follow-ups 3]   (--sizes "": the engine's part only)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from benchmarks.common import (
    BENCH_DIR,
    bot_cpu_tuning,
    bot_like_engine,
    full_int4_model,
    png,
    synthetic_photo,
    write_results,
)
from bot.media.decoding import prepare_image
from devkit.sound_files import speech_like
from engine.conversation import Turn
from engine.engine import Chunk, Engine, Finished, Heard
from engine.pipeline_protocol import Speech
from model_store.store import ModelEntry, ModelStore

LENGTHS = (5.0, 15.0, 60.0)
TOKENS_PER_SECOND = 3.0
REPEATS = 3
ANSWER_TOKENS = 32
SPOKEN_SECONDS = 15.0
GOAL_SECONDS = 1.5


def speech_model(size: str) -> ModelEntry:
    """Synthetic whisper-``size`` converted to INT8, built and converted on first use into a store of its own."""
    from bot.terminal.progress import TerminalProgress
    from devkit.synthetic import build_synthetic_whisper
    from model_store.convert import ConversionRequest, convert_in_subprocess

    checkpoint = BENCH_DIR / f"whisper-{size}"
    if not (checkpoint / "synthetic.json").is_file():
        build_synthetic_whisper(checkpoint, size)
    store = ModelStore(BENCH_DIR / "speech-store")
    for entry in store.entries():
        if entry.source == str(checkpoint) and entry.precision == "int8":
            return entry
    request = ConversionRequest(source=str(checkpoint), store_root=str(store.root))
    return convert_in_subprocess(request, TerminalProgress())


def transcription(entry: ModelEntry) -> dict[str, Any]:
    import openvino_genai as genai

    started = time.monotonic()
    pipeline = genai.WhisperPipeline(str(entry.path), "CPU", **bot_cpu_tuning().properties())
    results: dict[str, Any] = {"load_seconds": round(time.monotonic() - started, 2)}
    for seconds in LENGTHS:
        sound = speech_like(seconds).tolist()
        config = pipeline.get_generation_config()
        config.language, config.task = "<|en|>", "transcribe"
        config.max_new_tokens = config.min_new_tokens = round(TOKENS_PER_SECOND * min(seconds, 30.0))
        config.ignore_eos = True
        pipeline.generate(sound, config)  # the first call of a shape prepares OpenVINO's kernels
        times, tokens = [], 0
        for _ in range(REPEATS):
            began = time.monotonic()
            result = pipeline.generate(sound, config)
            times.append(time.monotonic() - began)
            tokens = int(result.perf_metrics.get_num_generated_tokens())
        best = min(times)
        results[f"{seconds:.0f} s"] = {"seconds": round(best, 3), "rtf": round(best / seconds, 3), "tokens": tokens}
        print(f"  {seconds:4.0f} s of sound: {best:6.3f} s (real-time factor {best / seconds:.3f}, {tokens} tokens)")
    return results


async def _first_words(engine: Engine, key: str, past: list[Turn], question: Turn, speech: Speech | None) -> Any:
    """Seconds to the first text, what was heard (None: typed), and the answer."""
    started = time.monotonic()
    first: float | None = None
    heard: Heard | None = None
    finished: Finished | None = None
    async for event in engine.ask(key, past, question, speech=speech):
        if isinstance(event, Heard):
            heard = event
        elif isinstance(event, Chunk) and first is None:
            first = time.monotonic() - started
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None and finished.status == "complete", finished
    return first, heard, finished


def _resident_mb(engine: Engine) -> float:
    pid = engine.model.pipeline.pid
    assert pid is not None
    return psutil.Process(pid).memory_info().rss / 1e6


async def conversation(model: Path, speech: ModelEntry | None, follow_ups: int) -> dict[str, Any]:
    """With ``speech``: two conversations, one asked aloud and one typed, the typed one asking word for word what the
    other was heard to ask, so both read questions of the same length; about two photos of the same size, so that
    neither finds the other's question in the prefix cache.  The difference in first words is what asking aloud
    costs.  Without: the photo question alone."""
    engine = await bot_like_engine(model, num_crops=4, answer_tokens=ANSWER_TOKENS, speech=speech)
    photo = prepare_image(png(synthetic_photo(11)))
    question = Turn("user", "What is in this photo?", (photo,))
    _, _, answer = await _first_words(engine, "typed", [], question, None)
    resident = _resident_mb(engine)  # after the same photo question, with or without the speech model
    result: dict[str, Any] = {"resident_mb": round(resident)}
    if speech is None:
        await engine.aclose()
        return result
    pasts = {"typed": [question, Turn("assistant", answer.text)]}
    other = Turn("user", question.text, (prepare_image(png(synthetic_photo(12))),))
    _, _, answer = await _first_words(engine, "spoken", [], other, None)
    pasts["spoken"] = [other, Turn("assistant", answer.text)]
    voice = Speech(speech_like(SPOKEN_SECONDS).astype("<f4").tobytes(), "<|en|>")
    rounds: list[dict[str, float]] = []
    for _ in range(follow_ups):
        spoken_first, heard, spoken = await _first_words(engine, "spoken", pasts["spoken"], Turn("user", ""), voice)
        asked = Turn("user", heard.question)
        typed_first, _, typed = await _first_words(engine, "typed", pasts["typed"], asked, None)
        for key, answer in (("spoken", spoken), ("typed", typed)):
            pasts[key] += [asked, Turn("assistant", answer.text)]
        rounds.append(
            {
                "spoken": round(spoken_first, 2),
                "typed": round(typed_first, 2),
                "transcription": round(heard.seconds, 2),
                "question_tokens": spoken.report.question_tokens,
                "replays": spoken.report.replays + typed.report.replays,
            }
        )
        print(f"  {rounds[-1]}")
    await engine.aclose()
    extra = statistics.median(item["spoken"] - item["typed"] for item in rounds)
    return result | {"rounds": rounds, "spoken_minus_typed_median": round(extra, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="base,small")
    parser.add_argument("--follow-ups", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, Any] = {"tokens_per_second_of_speech": TOKENS_PER_SECOND, "transcription": {}}
    entries = {size: speech_model(size) for size in args.sizes.split(",") if size}
    for size, entry in entries.items():
        print(f"whisper-{size} INT8:")
        results["transcription"][size] = transcription(entry)
    model = full_int4_model()
    base = entries.get("base") or speech_model("base")
    print("the engine, full-size Phi-3.5-vision INT4 with whisper-base beside it:")
    with_speech = asyncio.run(conversation(model, base, args.follow_ups))
    print(f"  {with_speech}")
    print("the same without a speech model:")
    without = asyncio.run(conversation(model, None, 1))
    print(f"  {without}")
    results["engine"] = {
        "with_speech": with_speech,
        "without_speech": without,
        "speech_model_adds_mb": with_speech["resident_mb"] - without["resident_mb"],
    }
    fifteen = results["transcription"].get("base", {}).get("15 s", {}).get("seconds")
    if fifteen is not None:
        verdict = "met" if fifteen <= GOAL_SECONDS else f"missed by {fifteen - GOAL_SECONDS:.2f} s"
        print(f"goal: 15 s with whisper-base in at most {GOAL_SECONDS} s: {fifteen:.3f} s, {verdict}")
    extra = with_speech["spoken_minus_typed_median"]
    verdict = "met" if extra <= GOAL_SECONDS else f"missed by {extra - GOAL_SECONDS:.2f} s"
    print(f"goal: a spoken follow-up at most {GOAL_SECONDS} s slower than a typed one: {extra:+.2f} s, {verdict}")
    print(f"the speech model adds {results['engine']['speech_model_adds_mb']} MB to the model's process")
    print(f"results: {write_results('voice', results)}")


if __name__ == "__main__":
    main()
