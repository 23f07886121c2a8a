"""What serving the model as a service costs against the local engine, and whether conversations stay with
the replica that holds them (issue 26).

Full-size synthetic Phi-3.5-vision INT4, the bot's engine settings, answers of ``--tokens`` tokens.  Two
scenarios, each timed as a chat sees it (from the question to its first text, and to its end):
* ten chats asking about a photo each at once: every chat's first text, and answer tokens per second in all;
* one long conversation: a photo, then ``--follow-ups`` questions, each after the answer before it.
Variants, each in a process of its own so memory and caches do not leak between them:
* ``local``: the engine in the bot's process, its model in a child (what the bot does without a service);
* ``http``: the same engine behind the service's HTTP side (service/http_app.py) on 127.0.0.1, asked by the
  remote engine: the protocol's cost alone;
* ``ray-1``, ``ray-2``: ``phi3bot serve``'s Ray Serve application with one and two replicas on this machine,
  asked through its HTTP ingress (on 2 cores two replicas share the CPU: the figures to read are the overhead
  against ``local`` and the affinity, not a speed-up).
The engine's own time to the follow-ups' first text (the service's, through the protocol's extension) is kept
beside the client's, to tell the service's time from the link's.
Goals: the service's first text and throughput within 5 % of the local engine's; every follow-up served by
the replica that holds its conversation.

Usage: python benchmarks/scale_out.py [--variants local,http,ray-1,ray-2] [--tokens 32] [--follow-ups 10]
       [--kv-cache-gb 4] [--results scale_out]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    BENCH_DIR,
    bot_like_engine,
    full_int4_model,
    png,
    synthetic_photo,
    timed_answer,
    write_results,
)

VARIANTS = ("local", "http", "ray-1", "ray-2")
CHATS = 10
NUM_CROPS = 4


def _photo(seed: int) -> Any:
    from bot.media.decoding import prepare_image

    return prepare_image(png(synthetic_photo(seed)))


@asynccontextmanager
async def _backend(variant: str, model: Path, tokens: int, kv_cache_gb: float) -> AsyncIterator[Any]:
    """The engine, or a client of a service that serves it, as the bot would ask it."""
    if variant.startswith("ray-"):
        async with _ray_service(model, tokens, int(variant.removeprefix("ray-")), kv_cache_gb) as client:
            yield client
        return
    engine = await bot_like_engine(model, num_crops=NUM_CROPS, answer_tokens=tokens, kv_cache_gb=kv_cache_gb)
    if variant == "local":
        try:
            yield engine
        finally:
            await engine.aclose()
        return
    from devkit.uvicorn_server import serving
    from service.http_app import Served, create_app

    if variant != "http":
        raise SystemExit(f"unknown variant {variant}")
    served = Served("bench", 0, engine.settings, num_crops=NUM_CROPS, history_tokens=engine.history_tokens, details={})
    try:
        async with serving(create_app(engine, served)) as url, _client(f"{url}/v1", engine.settings) as client:
            yield client
    finally:
        await engine.aclose()


@asynccontextmanager
async def _client(url: str, settings: Any) -> AsyncIterator[Any]:
    """The remote engine as the bot opens it, once the service has said what it serves."""
    from engine.remote_engine import RemoteEngine, ServedModel

    client = RemoteEngine(url, settings, namespace="bench", assumed=ServedModel("bench", NUM_CROPS, 3000, 3000))
    try:
        await client.describe()
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def _ray_service(model: Path, tokens: int, replicas: int, kv_cache_gb: float) -> AsyncIterator[Any]:
    """phi3bot serve's application in a local Ray cluster of this process, each replica the engine as
    bot_like_engine builds it, asked over HTTP by the remote engine."""
    import os
    import secrets
    import socket
    import tempfile

    import ray
    from ray import serve

    from benchmarks.common import bot_cpu_tuning
    from bot.settings import Settings
    from engine.generation import GenerationSettings
    from model_store.loader import ModelChoice
    from model_store.store import ModelStore
    from service.deployment import APP_NAME, CLUSTER_ENVIRONMENT, ReplicaModel, build_app

    defaults = Settings.model_fields
    settings = GenerationSettings(
        max_new_tokens=tokens, system_prompt=str(defaults["system_prompt"].default), ignore_eos=True
    )
    [entry] = [entry for entry in ModelStore(BENCH_DIR / "store").entries() if entry.path == model]
    os.environ.update(CLUSTER_ENVIRONMENT, RAY_AUTH_TOKEN=secrets.token_hex(32))  # as phi3bot serve starts one
    ray.init(address="local", include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        choice = ModelChoice(
            BENCH_DIR / "store",
            entry.source,
            "int4",
            num_crops=NUM_CROPS,
            views_dir=BENCH_DIR / "views",
            kv_cache_gb=kv_cache_gb,
            cpu=bot_cpu_tuning(),
        )
        replica = ReplicaModel(choice, settings, batch_max=defaults["batch_size"].default)
        serve.run(build_app(replica, replicas=replicas, replica_cpus=0.5), name=APP_NAME, route_prefix="/")
        async with _client(f"http://127.0.0.1:{port}/v1", settings) as client:
            yield client
    finally:
        serve.shutdown()
        ray.shutdown()


async def _ten_chats(backend: Any) -> dict[str, Any]:
    from engine.conversation import Turn

    started = time.monotonic()
    answers = await asyncio.gather(
        *(
            timed_answer(
                backend, f"chat-{chat}", [], Turn("user", f"Chat {chat}: what is in this photo?", (_photo(chat + 1),))
            )
            for chat in range(CHATS)
        )
    )
    wall = time.monotonic() - started
    firsts = [answer.first_text for answer in answers if answer.first_text is not None]
    tokens = sum(answer.finished.report.generated_tokens for answer in answers)
    return {
        "first_text_median": statistics.median(firsts),
        "first_text_max": max(firsts),
        "tokens_per_second": tokens / wall,
        "seconds": wall,
        "statuses": sorted({answer.finished.status for answer in answers}),
    }


async def _long_conversation(backend: Any, follow_ups: int) -> dict[str, Any]:
    from engine.conversation import Turn

    past: list[Turn] = []
    first = Turn("user", "What is in this photo?", (_photo(99),))
    opening = await timed_answer(backend, "long", past, first)
    past += [first, Turn("assistant", opening.finished.text)]
    times, engine_times, replays = [], [], 0
    for number in range(follow_ups):
        question = Turn("user", f"Follow-up {number + 1}: and what else do you notice?")
        answer = await timed_answer(backend, "long", past, question)
        if answer.first_text is not None:
            times.append(answer.first_text)
        if answer.finished.ttft_seconds is not None:  # as the engine that answered measured it, link left out
            engine_times.append(answer.finished.ttft_seconds)
        replays += answer.finished.report.replays
        past += [question, Turn("assistant", answer.finished.text)]
    return {
        "photo_first_text": opening.first_text,
        "follow_up_median": statistics.median(times),
        "follow_up_max": max(times),
        "engine_follow_up_median": statistics.median(engine_times) if engine_times else None,
        "replays": replays,
    }


async def _run(variant: str, tokens: int, follow_ups: int, kv_cache_gb: float) -> dict[str, Any]:
    model = full_int4_model()
    async with _backend(variant, model, tokens, kv_cache_gb) as backend:
        await timed_answer(backend, "warm-up", [], _warm_up_question())  # OpenVINO's first photo is slow
        return {
            "ten_chats": await _ten_chats(backend),
            "long_conversation": await _long_conversation(backend, follow_ups),
        }


def _warm_up_question() -> Any:
    from engine.conversation import Turn

    return Turn("user", "Warm up: what is this?", (_photo(1234),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--follow-ups", type=int, default=10)
    # KV_CACHE_GB of every variant's engine: two replicas at the bot's 4 GB (about 2 x 9.8 GB) do not fit in 24 GB
    parser.add_argument("--kv-cache-gb", type=float, default=4.0)
    parser.add_argument("--results", default="scale_out", help="the results file's name in benchmarks/results/")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one variant, in this process: JSON on stdout
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(asyncio.run(_run(args.variant, args.tokens, args.follow_ups, args.kv_cache_gb))))
        return
    full_int4_model()  # built once, before any variant's clock starts
    results: dict[str, Any] = {}
    for variant in args.variants.split(","):
        command = [sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens)]
        command += ["--follow-ups", str(args.follow_ups), "--kv-cache-gb", str(args.kv_cache_gb)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{variant}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(variant, json.dumps(results[variant]), flush=True)
    _print_table(results)
    settings = {"tokens": args.tokens, "follow_ups": args.follow_ups, "kv_cache_gb": args.kv_cache_gb}
    path = write_results(args.results, {**settings, "variants": results})
    print(f"written to {path} (bench data in {BENCH_DIR})")


def _print_table(results: dict[str, Any]) -> None:
    base = results.get("local")
    head = f"{'variant':10} {'10 chats: 1st text median/max s':>32} {'tok/s':>7}"
    print(f"\n{head} {'follow-up median/max s':>24} {'replays':>8}")
    for variant, result in results.items():
        ten, long = result["ten_chats"], result["long_conversation"]
        line = (
            f"{variant:10} {ten['first_text_median']:>20.2f} / {ten['first_text_max']:<9.2f}"
            f" {ten['tokens_per_second']:>7.2f}"
            f" {long['follow_up_median']:>14.2f} / {long['follow_up_max']:<7.2f} {long['replays']:>8}"
        )
        if base is not None and variant != "local":
            ratio = long["follow_up_median"] / base["long_conversation"]["follow_up_median"] - 1
            speed = ten["tokens_per_second"] / base["ten_chats"]["tokens_per_second"] - 1
            line += f"   follow-up {ratio:+.1%}, throughput {speed:+.1%} against local"
        print(line)


if __name__ == "__main__":
    main()
