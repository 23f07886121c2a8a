"""The bot as its users run it: ``phi3bot run`` in a process of its own, configured by its environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devkit.bot_api_server import FakeBotApi
from devkit.harness import ADMIN, USER

ROOT = Path(__file__).parents[1]


def bot_environment(api: FakeBotApi, store_root: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TELEGRAM_BOT_TOKEN": api.token,
        "TELEGRAM_API_BASE_URL": api.base_url,
        "TELEGRAM_FILE_BASE_URL": api.base_file_url,
        "ADMIN_USER_IDS": str(ADMIN),
        "ALLOWED_USER_IDS": str(USER),
        "DATA_DIR": str(data_dir),
        "MODEL_STORE_DIR": str(store_root),
        "MAX_NEW_TOKENS": "24",
        "KV_CACHE_GB": "1",
        "EDIT_INTERVAL_SECONDS": "0.2",
        "LOG_LEVEL": "DEBUG",
        "MEASURE_SPEED_AT_START": "false",  # a quiet start: the model answers nothing but what a test asks
        **extra,
    }


@dataclass
class BotProcess:
    process: asyncio.subprocess.Process
    stderr: str = ""
    lines: list[str] = field(default_factory=list)  # what it logged so far

    async def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.returncode is None, "".join(self.lines)[-3000:]
            assert time.monotonic() < deadline, f"no {text!r} in the log: {''.join(self.lines)[-3000:]}"
            await asyncio.sleep(0.05)


@asynccontextmanager
async def bot_process(
    environment: dict[str, str], workdir: Path, module: str = "bot.terminal.cli", command: Sequence[str] = ("run",)
) -> AsyncIterator[BotProcess]:
    """Runs ``python -m module run`` (or another of its commands); on the way out makes sure it is gone and keeps
    what it logged."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *command,
        cwd=workdir,  # no stray .env
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    running = BotProcess(process)

    async def read(stream: asyncio.StreamReader) -> None:
        async for line in stream:
            running.lines.append(line.decode(errors="replace"))

    logs = asyncio.create_task(read(process.stderr))
    try:
        yield running
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await logs
        running.stderr = "".join(running.lines)


def run_phi3bot(
    args: list[str],
    environment: dict[str, str],
    workdir: Path,
    stdin: str = "",
    module: str | None = None,
    wrapper: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """The installed ``phi3bot`` command, run to its end as a person would (``workdir``: no stray .env);
    ``module``: a test's variant of the command instead (``python -m module``); ``wrapper``: a command that runs
    it (such as ``setpriv`` with fewer privileges)."""
    command = [sys.executable, "-m", module] if module else [str(Path(sys.executable).with_name("phi3bot"))]
    return subprocess.run(
        [*wrapper, *command, *args],
        input=stdin,
        env=environment,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    """Something accepts connections on ``port`` of 127.0.0.1 (a webhook server the bot starts, say)."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def until_serving(url: str, served: BotProcess, timeout: float) -> None:
    """``phi3bot serve`` (``served``) answers at ``url``/health; fails with its log if it ends or stays silent."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            log = "".join(served.lines)[-3000:]
            assert served.process.returncode is None, f"phi3bot serve ended:\n{log}"
            assert time.monotonic() < deadline, f"phi3bot serve did not answer at {url}/health:\n{log}"
            await asyncio.sleep(0.5)
