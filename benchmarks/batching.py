"""Does answering several chats at once (continuous batching) beat answering them one after another here?

Same full synthetic INT4 model, N chats each asking a text question, then a photo question:
* ``VLMPipeline`` (continuous batching inside, prefix caching), one after another, and from N threads at once
  (openvino-genai 2026.4.1 refuses the overlapping ``generate``: "use ContinuousBatchingPipeline::add_request";
  the script reports that rather than a number);
* ``ContinuousBatchingPipeline.add_request``, one request at a time, and all N added together so the
  scheduler decodes them as one batch.
Printed: total wall time, answer tokens/s overall, and each chat's time to first token; then what a follow-up
about a photo costs through ``add_request``.

Usage: python benchmarks/batching.py [--chats 3] [--tokens 32] [--follow-up-only]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bot_cpu_tuning, full_int4_model, synthetic_photo, write_results
from model_store.loader import prefix_caching_scheduler

PROMPT = "Chat {chat}: describe a quiet harbour at dawn, with boats, gulls and a lighthouse, in a few words."

Request = tuple[str, list[Any]]
Answers = list[float]  # each request's time to first token, seconds from the start of the round


def requests(chats: int, round_: str, salt: int) -> list[Request]:
    """A new prompt each round (no prefix-cache shortcut); a photo per chat in the photo round."""
    import openvino as ov

    return [
        (
            PROMPT.format(chat=f"{chat}-{salt}"),
            [ov.Tensor(synthetic_photo(100 + chat + salt))] if round_ == "photo" else [],
        )
        for chat in range(chats)
    ]


def vlm_modes(model: Path, config: Any) -> dict[str, Callable[[list[Request]], Answers]]:
    import openvino_genai as genai

    pipeline = genai.VLMPipeline(
        str(model), "CPU", scheduler_config=prefix_caching_scheduler(4), **bot_cpu_tuning().properties()
    )
    pipeline.generate("Hello", generation_config=config)
    started = [0.0]

    def ask(request: Request) -> float:
        prompt, images = request
        begun = time.monotonic()
        metrics = pipeline.generate(prompt, images=images, generation_config=config).perf_metrics
        return begun - started[0] + metrics.get_ttft().mean / 1000

    def one_after_another(batch: list[Request]) -> Answers:
        started[0] = time.monotonic()
        return [ask(request) for request in batch]

    def all_at_once(batch: list[Request]) -> Answers:
        started[0] = time.monotonic()
        with ThreadPoolExecutor(len(batch)) as pool:
            return list(pool.map(ask, batch))

    return {"VLMPipeline, one after another": one_after_another, "VLMPipeline, all at once": all_at_once}


def batching_modes(model: Path, config: Any) -> dict[str, Callable[[list[Request]], Answers]]:
    import openvino_genai as genai

    pipeline = genai.ContinuousBatchingPipeline(
        str(model), prefix_caching_scheduler(4), "CPU", bot_cpu_tuning().properties()
    )
    ids = iter(range(1_000_000))

    def run(batch: list[Request]) -> Answers:
        """Add every request, then step the scheduler until all are done, noting each one's first token."""
        started = time.monotonic()
        handles = [pipeline.add_request(next(ids), prompt, images, config) for prompt, images in batch]
        first: list[float | None] = [None] * len(handles)
        while pipeline.has_non_finished_requests():
            pipeline.step()
            for index, handle in enumerate(handles):
                if (
                    first[index] is None
                    and handle.can_read()
                    and any(output.generated_ids for output in handle.read().values())
                ):
                    first[index] = time.monotonic() - started
        return [seconds if seconds is not None else float("nan") for seconds in first]

    def one_after_another(batch: list[Request]) -> Answers:
        started = time.monotonic()
        answers = []
        for request in batch:
            offset = time.monotonic() - started
            answers.append(offset + run([request])[0])
        return answers

    run(requests(1, "text", 0))  # warm-up
    return {
        "batching pipeline, one after another": one_after_another,
        "batching pipeline, all at once": run,
    }


def follow_up_through_batching(model: Path, config: Any) -> dict[str, float]:
    """What a follow-up about a photo costs through ``add_request``: the conversation goes in as one templated
    prompt with its photo, which is encoded again (no vision cache on this path); prefix caching may spare the
    language model's part.  Chat A asks about a photo, chat B asks something else, A follows up."""
    import openvino as ov
    import openvino_genai as genai

    pipeline = genai.ContinuousBatchingPipeline(
        str(model), prefix_caching_scheduler(4), "CPU", bot_cpu_tuning().properties()
    )
    tokenizer = pipeline.get_tokenizer()
    raw = genai.GenerationConfig(max_new_tokens=config.max_new_tokens, ignore_eos=True, apply_chat_template=False)
    ids = iter(range(1_000_000))

    def ask(messages: list[dict[str, str]], images: list[Any]) -> tuple[float, str]:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        started = time.monotonic()
        handle = pipeline.add_request(next(ids), prompt, images, raw)
        first: float | None = None
        tokens: list[int] = []
        while pipeline.has_non_finished_requests():
            pipeline.step()
            while handle.can_read():
                for output in handle.read().values():
                    if output.generated_ids and first is None:
                        first = time.monotonic() - started
                    tokens.extend(output.generated_ids)
        return (first if first is not None else float("nan")), tokenizer.decode(tokens)

    photo = [ov.Tensor(synthetic_photo(41))]
    chat_a = [{"role": "user", "content": "<|image_1|>\nWhat is in this image?"}]
    cold, answer = ask(chat_a, photo)
    ask([{"role": "user", "content": "Chat B: what is a lighthouse for?"}], [])
    chat_a += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And what colour is it?"}]
    follow_up, _ = ask(chat_a, photo)
    row = {"photo_question_seconds": round(cold, 2), "follow_up_after_other_chat_seconds": round(follow_up, 2)}
    print(
        f"photo follow-up through add_request (photo encoded again): first token after {follow_up:.2f} s"
        f" (the photo question itself: {cold:.1f} s)",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument(
        "--follow-up-only",
        action="store_true",
        help="only the follow-up measurement (written to batching_follow_up.json)",
    )
    args = parser.parse_args()

    import openvino_genai as genai

    config = genai.GenerationConfig()
    config.max_new_tokens = args.tokens
    config.ignore_eos = True
    model = full_int4_model()
    results: dict[str, Any] = {}
    salt = 0
    for build in () if args.follow_up_only else (vlm_modes, batching_modes):
        modes = build(model, config)
        for round_ in ("text", "photo"):
            for mode, run in modes.items():
                salt += 1
                name = f"{round_}, {mode}"
                started = time.monotonic()
                try:
                    first = run(requests(args.chats, round_, salt))
                except RuntimeError as error:  # GenAI 2026.4 refuses overlapping VLMPipeline.generate calls
                    reason = next((line for line in str(error).splitlines() if "cannot" in line), str(error))
                    results[name] = {"refused": reason.strip()}
                    print(f"{name:<45}: refused by GenAI: {reason.strip()}", flush=True)
                    continue
                total = time.monotonic() - started
                row = {
                    "total_seconds": round(total, 1),
                    "tokens_per_second": round(args.chats * args.tokens / total, 2),
                    "first_token_seconds": [round(seconds, 1) for seconds in first],
                }
                results[name] = row
                print(
                    f"{name:<45}: total {row['total_seconds']:6.1f} s, {row['tokens_per_second']:5.2f} tok/s,"
                    f" first tokens after {row['first_token_seconds']} s",
                    flush=True,
                )
        del modes
        gc.collect()
    follow_up = follow_up_through_batching(model, config)
    data = {"chats": args.chats, "tokens": args.tokens, "runs": results, "follow_up": follow_up}
    print(f"results: {write_results('batching_follow_up' if args.follow_up_only else 'batching', data)}")


if __name__ == "__main__":
    main()
