"""The first follow-up after a bot restart, with the model in the bot's own process and with the model served by
``phi3bot serve`` (issue 26: 39.8 s before the service; the goal is 2 s), and what a person is shown meanwhile
(issue 28: a status within 1 s, with an estimate, from the first photo of a new install on).

The real bot (python-telegram-bot over HTTP against the stand-in Bot API server, history in SQLite) with the
full-size synthetic INT4 model, as a user meets it in a private chat (answers streamed as drafts, the default):
a new install (its data directory empty: the model's speed is measured once it loads, MEASURE_SPEED_AT_START)
whose chat, once that is done, has a conversation of two photos, each with a follow-up; then the bot stops and
starts again on the same data directory, and the chat asks a follow-up as soon as the bot takes updates (its
model still loading), then one more; then the bot restarts once more and the chat asks 30 s after its start.
Times run from the question to the first status shown, to the first draft that shows answer text, and to the
answer's final message; the estimate shown is the first "about N s" of the status, against the first text.
Variants, one after the other:
* ``local``: the bot's own model process, which ends with the bot; at its start the bot reads the conversations
  of the last WARM_UP_HOURS again (their photos too), and a follow-up asked meanwhile waits for that;
* ``service``: ``phi3bot serve`` (one replica, in a one-machine Ray cluster of its own) in a process of its own,
  with the same settings, running on across the bot's restart; the bot's MODEL_SERVICE_URL points at it.

Usage: python benchmarks/bot_restart.py [--variants local,service] [--tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bot_overhead import watch
from benchmarks.common import BENCH_DIR, full_int4_model, png, synthetic_photo, write_results
from bot.settings import Settings
from devkit.bot_api_server import FakeBotApi
from devkit.harness import USER, RunningBot, bot_settings, running_bot
from devkit.processes import ROOT, bot_process, free_port, until_serving
from engine.engine import Engine

VARIANTS = ("local", "service")
CHAT = USER
BEFORE = (
    ("What is in this photo?", 31),
    ("And what colours do you see there?", None),
    ("What is in this one?", 32),
    ("How does it differ from the first photo?", None),
)
AFTER = ("After the restart: what did the first photo show?", "And the second one?")
LATER = ("Back again: which of the two photos had more colour?", 30.0)  # asked this long after a second restart
ESTIMATE = re.compile(r"about (\d+) (s|min)\b")


async def _ask(api: FakeBotApi, text: str, seed: int | None, index: int) -> dict[str, Any]:
    """The answer's times, and the first status shown (any draft) and the first estimate in it."""
    started = time.monotonic()
    drafted = len(api.drafts[CHAT])
    photo = png(synthetic_photo(seed)) if seed is not None else None
    api.push_message(CHAT, text, photo=photo, user_id=CHAT)
    timed = await watch(api, CHAT, started, index, drafts=True)
    drafts = api.drafts[CHAT][drafted:]
    timed["status"] = round(drafts[0].at - started, 2) if drafts else None
    said = next((match for draft in drafts if (match := ESTIMATE.search(draft.text))), None)
    if said is not None:
        seconds = int(said.group(1)) * (60 if said.group(2) == "min" else 1)
        timed["estimate"] = seconds
        timed["estimate_error"] = round(seconds / timed["first_text"] - 1, 2)
    print(f"  {text!r}: {timed}", flush=True)
    return timed


async def _measured(bot: RunningBot, timeout: float = 900.0) -> float:
    """Seconds until the bot's model, new to this machine, has loaded and measured its speed."""
    started = time.monotonic()
    engine = bot.services.engine

    def busy() -> bool:  # measuring answers three made-up questions (engine.Engine.calibrate)
        return isinstance(engine, Engine) and (engine.stats.answered < 3 or bool(engine.queue.in_line()))

    while busy():
        if time.monotonic() - started > timeout:
            raise TimeoutError("the model's speed was not measured")
        await asyncio.sleep(0.2)
    return round(time.monotonic() - started, 2)


async def _conversation(api: FakeBotApi, tokens: int, data: Path, service_url: str | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {"model_service_url": service_url} if service_url else {}
    store = BENCH_DIR / "store" if service_url is None else data / "no-models-here"
    paced = {name: Settings.model_fields[name].default for name in ("draft_interval_seconds", "edit_interval_seconds")}
    settings = bot_settings(
        api,
        store,
        data,
        max_new_tokens=tokens,
        kv_cache_gb=4,
        user_requests_per_minute=60,
        measure_speed_at_start=True,
        **paced,
        **overrides,
    )  # drafts and edits paced as the bot's defaults pace them (the tests' harness paces them faster)
    asked = 0
    before = []
    async with running_bot(api, settings) as bot:
        measured = await _measured(bot)
        print(f"  loaded and measured in {measured} s", flush=True)
        for text, seed in BEFORE:
            before.append(await _ask(api, text, seed, asked))
            asked += 1
    print("  the bot restarts", flush=True)
    started = time.monotonic()
    async with running_bot(api, settings):
        start_seconds = time.monotonic() - started
        after = []
        for text in AFTER:
            after.append(await _ask(api, text, None, asked))
            asked += 1
    text, pause = LATER
    print(f"  the bot restarts; the chat asks {pause:.0f} s later", flush=True)
    async with running_bot(api, settings):
        await asyncio.sleep(pause)
        later = await _ask(api, text, None, asked)
    return {
        "measured_seconds": measured,
        "start_seconds": round(start_seconds, 2),
        "before": before,
        "after": after,
        "later": later,
        "follow_ups_before_median": statistics.median(before[index]["first_text"] for index in (1, 3)),
    }


@asynccontextmanager
async def _service(tokens: int, workdir: Path) -> AsyncIterator[str]:
    """``phi3bot serve`` as an operator starts it, with the bot's settings; SIGTERM ends it."""
    port = free_port()
    ray_directory = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must be
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MODEL_STORE_DIR": str(BENCH_DIR / "store"),
        "DATA_DIR": str(workdir),
        "KV_CACHE_GB": "4",
        "MAX_NEW_TOKENS": str(tokens),
        "RAY_TMPDIR": ray_directory,
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    environment.pop("RAY_ADDRESS", None)
    url = f"http://127.0.0.1:{port}"
    async with bot_process(environment, workdir, command=("serve", "--port", str(port))) as served:
        await until_serving(url, served, 600)
        try:
            yield f"{url}/v1"
        finally:
            served.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(served.process.wait(), 120)


async def _run(variant: str, tokens: int) -> dict[str, Any]:
    print(variant, flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        async with FakeBotApi() as api:
            if variant == "local":
                return await _conversation(api, tokens, Path(scratch), None)
            if variant != "service":
                raise SystemExit(f"unknown variant {variant}")
            async with _service(tokens, Path(scratch)) as url:
                return await _conversation(api, tokens, Path(scratch), url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    full_int4_model()  # built once, before any clock starts
    results = {variant: asyncio.run(_run(variant, args.tokens)) for variant in args.variants.split(",")}
    print(f"\n{'variant':10}{'bot start s':>12}{'follow-ups before s':>21}{'1st after restart s':>21}{'2nd s':>8}")
    for variant, result in results.items():
        first, second = (step["first_text"] for step in result["after"])
        print(
            f"{variant:10}{result['start_seconds']:>12.1f}{result['follow_ups_before_median']:>21.2f}"
            f"{first:>21.2f}{second:>8.2f}"
        )
    print(f"\n{'variant':10}{'question':44}{'status s':>9}{'estimate s':>11}{'first text s':>13}{'error':>7}")
    for variant, result in results.items():
        asked = [
            ("new install, first photo", result["before"][0]),
            ("asked while the model loads", result["after"][0]),
            (f"asked {LATER[1]:.0f} s after a start", result["later"]),
        ]
        for label, step in asked:
            estimate, error = step.get("estimate"), step.get("estimate_error")
            print(
                f"{variant:10}{label:44}{step['status'] or float('nan'):>9.2f}"
                f"{estimate if estimate is not None else '-':>11}{step['first_text']:>13.2f}"
                f"{f'{error:+.0%}' if error is not None else '-':>7}"
            )
    print(f"results: {write_results('bot_restart', {'tokens': args.tokens, 'variants': results})}")


if __name__ == "__main__":
    main()
