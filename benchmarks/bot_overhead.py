"""What the Telegram layer adds on top of the engine, and how ten chats asking at once are served.

The real bot (python-telegram-bot over HTTP, history in SQLite, streamed edits) runs against the stand-in
Bot API server on 127.0.0.1 with the full synthetic INT4 model.  Times are taken the way a user sees them:
from the moment the update is available to the first edit that shows answer text, and to the final edit.
The same questions are then put to the engine directly, so the difference is the bot's overhead.  Answers
stream as edits (STREAM_DRAFTS=false), as in groups: the figures in the README were taken that way.  The ten
chats asking at once are served once per ``--batch-sizes`` entry (BATCH_SIZE: 1 = one after another).

Usage: python benchmarks/bot_overhead.py [--tokens 32] [--chats 10] [--batch-sizes 1,4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BENCH_DIR, full_int4_model, png, synthetic_photo, timed_answer, write_results
from bot import texts
from bot.media.decoding import prepare_image
from devkit.bot_api_server import FakeBotApi, SentMessage
from devkit.harness import answer_drafts, bot_settings, finished, running_bot
from engine.conversation import Turn
from engine.engine import Engine

FIRST_USER = 10_000


def seen(message: SentMessage) -> tuple[bool, bool]:
    """(answer text is showing, the answer is final)."""
    statuses = ("Looking at", "in line")
    showing = any(edit != texts.PLACEHOLDER and not any(s in edit for s in statuses) for edit in message.edits)
    return showing, finished(message)


async def watch(api: FakeBotApi, chat: int, started: float, index: int = 0, drafts: bool = False) -> dict[str, Any]:
    """How the answer in the chat's message number ``index`` showed: its first text (in a draft, with ``drafts``:
    a private chat's default) and its final edit."""
    first: float | None = None
    drafted = len(answer_drafts(api, chat))
    while True:
        if drafts and first is None and len(answer_drafts(api, chat)) > drafted:
            first = time.monotonic() - started
        messages = api.messages(chat)
        if len(messages) > index:
            showing, final = seen(messages[index])
            if showing and first is None and not drafts:
                first = time.monotonic() - started
            if final:
                return {
                    "first_text": round(first if first is not None else time.monotonic() - started, 2),
                    "final": round(time.monotonic() - started, 2),
                    "edits": len(messages[index].edits) - 1,
                }
        await asyncio.sleep(0.02)


async def through_bot(tokens: int, chats: int, batch_size: int) -> dict[str, Any]:
    async with FakeBotApi() as api:
        users = [FIRST_USER + index for index in range(chats)]
        with tempfile.TemporaryDirectory() as data:
            settings = bot_settings(
                api,
                BENCH_DIR / "store",
                Path(data),
                max_new_tokens=tokens,
                kv_cache_gb=4,
                edit_interval_seconds=1.0,
                stream_drafts=False,
                allowed_user_ids=",".join(map(str, users)),
                user_requests_per_minute=60,
                queue_max=chats + 1,
                batch_size=batch_size,
            )
            async with running_bot(api, settings, long_answers=True):
                started = time.monotonic()
                api.push_message(users[0], "Hello", user_id=users[0])  # warm-up
                await watch(api, users[0], started)
                results: dict[str, Any] = {}
                for name, photo in (("text question", None), ("photo question", png(synthetic_photo(21)))):
                    user = users[1] if photo is None else users[2]
                    started = time.monotonic()
                    api.push_message(user, "What can you tell me about harbours?", photo=photo, user_id=user)
                    results[name] = await watch(api, user, started)
                    print(f"bot (BATCH_SIZE={batch_size}), {name}: {results[name]}", flush=True)
                crowd = users[3:]  # chats that have not spoken yet
                started = time.monotonic()
                for user in crowd:
                    api.push_message(user, f"Question from {user}: what is a lighthouse for?", user_id=user)
                waits = await asyncio.gather(*(watch(api, user, started) for user in crowd))
                total = max(w["final"] for w in waits)
                results["chats at once"] = {
                    "chats": len(crowd),
                    "total_seconds": round(total, 1),
                    "tokens_per_second": round(len(crowd) * tokens / total, 2),
                    "first_text_seconds": sorted(w["first_text"] for w in waits),
                }
                print(
                    f"bot (BATCH_SIZE={batch_size}), {len(crowd)} chats at once: {results['chats at once']}", flush=True
                )
    return results


async def through_engine(tokens: int) -> dict[str, Any]:
    from bot.running.runtime import load_model
    from bot.settings import load_settings
    from engine.generation import GenerationSettings

    settings = load_settings(model_store_dir=BENCH_DIR / "store", data_dir=BENCH_DIR / "engine-data", kv_cache_gb=4)
    engine = Engine(
        await asyncio.to_thread(load_model, settings),
        GenerationSettings(max_new_tokens=tokens, system_prompt="You are a test assistant.", ignore_eos=True),
    )
    results: dict[str, Any] = {}
    await timed_answer(engine, "warm", [], Turn("user", "Hello"))
    for name, photo in (("text question", None), ("photo question", png(synthetic_photo(22)))):
        images = (prepare_image(photo),) if photo is not None else ()
        answer = await timed_answer(engine, name, [], Turn("user", "What can you tell me about harbours?", images))
        results[name] = {"first_text": round(answer.first_text or 0.0, 2), "final": round(answer.seconds, 2)}
        print(f"engine, {name}: {results[name]}", flush=True)
    await engine.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--chats", type=int, default=10)
    parser.add_argument("--batch-sizes", default="1,4")
    args = parser.parse_args()
    full_int4_model()
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    bots = {size: asyncio.run(through_bot(args.tokens, args.chats + 3, size)) for size in sizes}
    engine = asyncio.run(through_engine(args.tokens))
    bot = bots[sizes[0]]
    print(
        f"\n{'':<16}{'engine first text':>18}{'bot first text':>16}{'engine done':>13}{'bot final edit':>16}"
        f"{'edits':>7}"
    )
    for name in ("text question", "photo question"):
        b, e = bot[name], engine[name]
        print(
            f"{name:<16}{e['first_text']:>17.2f}s{b['first_text']:>15.2f}s{e['final']:>12.2f}s{b['final']:>15.2f}s"
            f"{b['edits']:>7}"
        )
    for size, results in bots.items():
        crowd = results["chats at once"]
        print(
            f"\n{crowd['chats']} chats at once, BATCH_SIZE={size}: all answered in {crowd['total_seconds']} s "
            f"({crowd['tokens_per_second']} tokens/s); first text after {crowd['first_text_seconds']} s"
        )
    print(f"results: {write_results('bot_overhead', {'tokens': args.tokens, 'bot': bots, 'engine': engine})}")


if __name__ == "__main__":
    main()
