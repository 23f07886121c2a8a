"""Does answering several chats at once (continuous batching) beat answering them one after another here?

The engine runs one generation at a time unless this says otherwise.  Same full synthetic INT4 pipeline
(continuous batching, prefix caching), N chats each asking a text question and a photo question round,
first one after another, then all at once from N threads.  (With openvino-genai 2026.4.1 the second
overlapping ``VLMPipeline.generate`` is refused: "use ContinuousBatchingPipeline::add_request"; the script
reports that rather than a number.)  Printed: total wall time, answer tokens/s overall, and each chat's
time to first token.

Usage: python benchmarks/batching.py [--chats 3] [--tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import full_int4_model, synthetic_photo, write_results
from model_store.loader import CpuTuning

PROMPT = "Chat {chat}: describe a quiet harbour at dawn, with boats, gulls and a lighthouse, in a few words."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()

    import openvino as ov
    import openvino_genai as genai

    scheduler = genai.SchedulerConfig()
    scheduler.enable_prefix_caching = True
    scheduler.cache_size = 4
    properties = CpuTuning(dynamic_quantization_group_size=64).properties()
    pipeline = genai.VLMPipeline(str(full_int4_model()), "CPU", scheduler_config=scheduler, **properties)
    config = genai.GenerationConfig()
    config.max_new_tokens = args.tokens
    config.ignore_eos = True
    pipeline.generate("Hello", generation_config=config)

    def ask(chat: int, round_: str, salt: int) -> dict[str, float]:
        prompt = PROMPT.format(chat=f"{chat}-{salt}")  # a new prompt each time: no prefix-cache shortcut
        images = [ov.Tensor(synthetic_photo(100 + chat + salt))] if round_ == "photo" else []
        started = time.monotonic()
        metrics = pipeline.generate(prompt, images=images, generation_config=config).perf_metrics
        return {"ttft": metrics.get_ttft().mean / 1000, "seconds": time.monotonic() - started}

    results: dict[str, Any] = {}
    for round_ in ("text", "photo"):
        for mode, salt in (("one after another", 1), ("all at once", 2)):
            started = time.monotonic()
            if mode == "one after another":
                answers = [ask(chat, round_, salt) for chat in range(args.chats)]
            else:
                try:
                    with ThreadPoolExecutor(args.chats) as pool:
                        chats = range(args.chats)
                        answers = list(pool.map(ask, chats, [round_] * args.chats, [salt] * args.chats))
                except RuntimeError as error:  # GenAI 2026.4 refuses overlapping generate() calls
                    reason = next((line for line in str(error).splitlines() if "cannot" in line), str(error))
                    results[f"{round_}, {mode}"] = {"refused": reason.strip()}
                    print(f"{round_:>5}, {mode:<17}: refused by GenAI: {reason.strip()}", flush=True)
                    continue
            total = time.monotonic() - started
            row = {
                "total_seconds": round(total, 1),
                "tokens_per_second": round(args.chats * args.tokens / total, 2),
                "ttft_seconds": [round(a["ttft"], 1) for a in answers],
            }
            results[f"{round_}, {mode}"] = row
            print(
                f"{round_:>5}, {mode:<17}: total {row['total_seconds']:6.1f} s, {row['tokens_per_second']:5.2f} tok/s,"
                f" first tokens {row['ttft_seconds']}",
                flush=True,
            )
    print(f"results: {write_results('batching', {'chats': args.chats, 'tokens': args.tokens, 'runs': results})}")


if __name__ == "__main__":
    main()
