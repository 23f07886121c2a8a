"""Strangers flooding the bot: how long its owner waits for an answer meanwhile (issue 23, item 1).

The real bot (``python -m bot.terminal.cli run``, its own process) runs against the stand-in Bot API server on
127.0.0.1.  Strangers add it to ``--groups`` groups of their own and mention it there ``--mentions`` times in all,
and
``--strangers`` strangers send ``--private`` private messages between them; right after the flood an allowed
user sends /help and then a question.  Measured as a user sees it: from the moment their update is available
to the bot's reply (for the question: its first status, the empty draft Telegram shows as "Thinking…").  The
same /help is timed on a quiet bot first, in the same run.  ``--bot-dir`` runs another checkout of the bot (an
older release, say) against the same flood, for a before-and-after in one run on one machine.

Usage: python benchmarks/flood.py [--store DIR] [--mentions 1000] [--groups 10] [--private 300]
       [--strangers 100] [--bot-dir DIR] [--name flood]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BENCH_DIR, full_int4_model, write_results
from devkit.bot_api_server import BOT_USER, FakeBotApi
from devkit.harness import ADMIN, USER
from devkit.processes import bot_environment, bot_process

FIRST_STRANGER = 50_000
TIMEOUT = 3600.0  # an older release may take most of an hour to get through the flood


async def reply_time(api: FakeBotApi, chat: int, text: str, *, draft: bool = False) -> float:
    """Seconds from the update being available to the bot's first reply in ``chat`` (a message, or a draft)."""
    seen_messages, seen_drafts = len(api.messages(chat)), len(api.drafts[chat])
    started = time.monotonic()
    api.push_message(chat, text, user_id=chat)
    if draft:
        await api.wait_for(lambda: len(api.drafts[chat]) > seen_drafts, TIMEOUT, "a status")
    else:
        await api.wait_for(lambda: len(api.messages(chat)) > seen_messages, TIMEOUT, "a reply")
    return round(time.monotonic() - started, 3)


async def run(args: argparse.Namespace, store: Path) -> dict[str, Any]:
    groups = [-1009000 - index for index in range(args.groups)]
    async with FakeBotApi() as api:
        with tempfile.TemporaryDirectory() as workdir:
            extra = {"LOG_LEVEL": "INFO", "MAX_NEW_TOKENS": "16"}
            environment = bot_environment(api, store, Path(workdir) / "data", **extra)
            if args.bot_dir is not None:
                environment["PYTHONPATH"] = str(args.bot_dir.resolve())
            async with bot_process(environment, Path(workdir)) as bot:
                await api.wait_for(lambda: bool(api.calls_of("getUpdates")), 600, "the bot polling")
                await api.wait_for(lambda: bool(api.commands), 600, "the bot set up")
                process = psutil.Process(bot.process.pid)
                quiet = await reply_time(api, USER, "/help")
                rss_before = process.memory_info().rss
                owners = [FIRST_STRANGER - 1 - index for index in range(len(groups))]  # one stranger per group
                for group, owner in zip(groups, owners, strict=True):
                    api.push_my_chat_member(group, owner)
                for index in range(args.mentions):
                    group, owner = groups[index % len(groups)], owners[index % len(groups)]
                    api.push_message(group, f"@{BOT_USER['username']} hi {index}", user_id=owner)
                for index in range(args.private):
                    stranger = FIRST_STRANGER + index % args.strangers
                    api.push_message(stranger, f"let me in {index}", user_id=stranger)
                flooded = time.monotonic()
                help_after = await reply_time(api, USER, "/help")
                status_after = await reply_time(api, USER, "What is in a harbour?", draft=True)
                await api.wait_for(lambda: api.pending_updates == 0, TIMEOUT, "every update fetched")
                stats_text = await admin_stats(api)
                rss_after = process.memory_info().rss
                results = {
                    "mentions": args.mentions,
                    "groups": args.groups,
                    "private_messages": args.private,
                    "strangers": args.strangers,
                    "help_quiet_seconds": quiet,
                    "help_after_flood_seconds": help_after,
                    "first_status_after_flood_seconds": status_after,
                    "flood_fetched_seconds": round(time.monotonic() - flooded, 2),
                    "messages_into_strangers_groups": sum(len(api.calls_of("sendMessage", g)) for g in groups),
                    "refusals_into_private_chats": sum(
                        len(api.calls_of("sendMessage", FIRST_STRANGER + i)) for i in range(args.strangers)
                    ),
                    "groups_left": len(api.left_chats),
                    "stats": stats_text,
                    "bot_rss_mb_before": round(rss_before / 1e6),
                    "bot_rss_mb_after": round(rss_after / 1e6),
                }
    return results


async def admin_stats(api: FakeBotApi) -> str:
    """The bot's own count of refusals, as /stats shows it to an admin."""
    before = len(api.messages(ADMIN))
    api.push_message(ADMIN, "/stats", user_id=ADMIN)
    await api.wait_for(lambda: len(api.messages(ADMIN)) > before, TIMEOUT, "stats")
    text = api.messages(ADMIN)[-1].text
    found = re.search(r"^Refusals: .*$", text, re.MULTILINE)
    return found.group(0) if found else "(this release does not count refusals)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a model store (default: the full synthetic INT4's)")
    parser.add_argument("--mentions", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--private", type=int, default=300)
    parser.add_argument("--strangers", type=int, default=100)
    parser.add_argument("--bot-dir", type=Path, help="another checkout of the bot to run instead of this one")
    parser.add_argument("--name", default="flood", help="results file name under benchmarks/results")
    args = parser.parse_args()
    if args.store is None:
        full_int4_model()
    store = args.store or BENCH_DIR / "store"
    results = asyncio.run(run(args, store))
    for name, value in results.items():
        print(f"{name:>36}: {value}")
    print(f"results: {write_results(args.name, {'bot_dir': str(args.bot_dir or 'this checkout'), **results})}")


if __name__ == "__main__":
    main()
