"""What strangers who find the webhook's port cost the bot: POSTs of a large body with a wrong secret, at once.

``phi3bot run`` runs in webhook mode (no model) against the stand-in Bot API server; each request announces
and sends its whole body, as an attacker's client would, and the bot process's resident memory is sampled
every 50 ms.  ``--compare`` runs the same against the bot of another checkout too (say, one from before the
webhook server decided on headers alone).

Usage: python benchmarks/webhook_flood.py [--requests 8] [--megabytes 99] [--compare DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from benchmarks.common import write_results
from devkit.bot_api_server import FakeBotApi
from devkit.processes import ROOT, bot_environment, bot_process, free_port, listening


async def stranger(port: int, size: int) -> tuple[str, int]:
    """One POST with a wrong secret and a ``size``-byte body: (the status line, bytes of the body sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /telegram/hook HTTP/1.1\r\nHost: bot.example.com\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\nX-Telegram-Bot-Api-Secret-Token: guessed\r\n\r\n".encode()
    )
    piece, sent = b"x" * 1024 * 1024, 0
    with contextlib.suppress(ConnectionError):
        while sent < size:
            writer.write(piece[: size - sent])
            await writer.drain()
            sent += min(len(piece), size - sent)
    status = b""
    with contextlib.suppress(ConnectionError, TimeoutError):
        status = await asyncio.wait_for(reader.readline(), 60)
    writer.close()
    return status.decode().strip() or "(connection closed)", sent


async def flood(requests: int, megabytes: int, source: Path) -> dict[str, Any]:
    async with FakeBotApi() as api:
        work = Path(tempfile.mkdtemp())
        port = free_port()
        environment = bot_environment(
            api,
            work / "store",
            work / "data",
            WEBHOOK_URL=f"http://127.0.0.1:{port}/telegram/hook",
            WEBHOOK_PORT=str(port),
            WEBHOOK_SECRET_TOKEN="the_Real-secret",
            LOG_LEVEL="INFO",
            PYTHONPATH=str(source),
        )
        async with bot_process(environment, work) as bot:
            await api.wait_for(lambda: api.webhook_url is not None, 120, "setWebhook")
            await api.wait_for(lambda: listening(port), 30, "the webhook's listener")
            process = psutil.Process(bot.process.pid)
            before = peak = process.memory_info().rss

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, process.memory_info().rss)
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample())
            started = time.monotonic()
            answers = await asyncio.gather(*(stranger(port, megabytes * 1024 * 1024) for _ in range(requests)))
            seconds = time.monotonic() - started
            await asyncio.sleep(0.5)
            sampler.cancel()
            after = process.memory_info().rss
    return {
        "source": str(source),
        "requests": requests,
        "body_mb": megabytes,
        "answers": sorted({status for status, _ in answers}),
        "body_mb_sent": round(sum(sent for _, sent in answers) / 2**20),
        "seconds": round(seconds, 1),
        "rss_mb_before": before // 2**20,
        "rss_mb_peak": peak // 2**20,
        "rss_mb_after": after // 2**20,
    }


def commit(source: Path) -> str:
    done = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--megabytes", type=int, default=99)
    parser.add_argument("--compare", type=Path, help="another checkout whose bot to flood as well")
    args = parser.parse_args()
    rows = []
    for source in [ROOT, *([args.compare.resolve()] if args.compare else [])]:
        row = {"commit": commit(source), **asyncio.run(flood(args.requests, args.megabytes, source))}
        print(row)
        rows.append(row)
    print(write_results("webhook_flood", {"rows": rows}))


if __name__ == "__main__":
    main()
