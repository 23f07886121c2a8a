"""The bot's secrets stay in the bot's process, and its children die with it (bot/running/secrecy.py,
model_store/child_start.py).

Children are started the way the bot starts them, from a process that went through the bot's own start-up:
``phi3bot run`` itself, or variants of ``phi3bot models`` (tests/support/looking_children.py,
tests/support/lingering_children.py).  The token comes from the environment, the webhook's secret from
``.env``, a Hugging Face token from both, the model service's key and a variable no list names (``SOME_SECRET``)
from the environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from bot.running.secrecy import allowed
from devkit.bot_api_server import FakeBotApi
from devkit.processes import ROOT, bot_environment, bot_process, run_phi3bot
from model_store.store import ModelEntry, ModelStore

TOKEN = "123456:AAHsecretTokenOfTheBotUnderTest_012"
WEBHOOK_SECRET = "webhook_Secret_from_dotenv"
HF_TOKEN_ENVIRONMENT, HF_TOKEN_DOTENV = "hf_TokenFromTheEnvironment", "hf_TokenFromDotenv"
UNLISTED = "x-unlisted-value"
SERVICE_KEY = "model-service-key-of-the-bot"
SECRETS = (TOKEN, TOKEN.split(":")[1], WEBHOOK_SECRET, HF_TOKEN_ENVIRONMENT, HF_TOKEN_DOTENV, UNLISTED, SERVICE_KEY)
GONE_WITHIN_SECONDS = 3.0


def work_directory(tmp_path: Path) -> dict[str, str]:
    """Where the bot runs: its .env, a history database holding a conversation, an empty checkpoint
    directory; returns the environment it is started with."""
    (tmp_path / ".env").write_text(f"WEBHOOK_SECRET_TOKEN={WEBHOOK_SECRET}\nHF_TOKEN={HF_TOKEN_DOTENV}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "checkpoint").mkdir()
    with sqlite3.connect(tmp_path / "data" / "history.sqlite3") as database:
        database.execute("CREATE TABLE private_notes (text TEXT)")
        database.execute("INSERT INTO private_notes VALUES ('a private conversation')")
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "HF_TOKEN": HF_TOKEN_ENVIRONMENT,
        "SOME_SECRET": UNLISTED,
        "MODEL_SERVICE_API_KEY": SERVICE_KEY,
        "DATA_DIR": str(tmp_path / "data"),
    }


def no_secret_in(found: object, where: str, secrets: tuple[str, ...] = SECRETS) -> None:
    text = json.dumps(found)
    for secret in secrets:
        assert secret not in text, f"{secret!r} reached {where}: {text[:3000]}"


def only_allowed_variables(environment: dict[str, str], where: str) -> None:
    unlisted = sorted(name for name in environment if not allowed(name))
    assert unlisted == [], f"{where} got variables no list names: {unlisted}"
    assert not {"SOME_SECRET", "HF_TOKEN", "TELEGRAM_BOT_TOKEN", "MODEL_SERVICE_API_KEY"} & set(environment), where


def test_children_find_no_secret_and_the_confined_ones_can_read_neither_env_nor_the_history(tmp_path: Path) -> None:
    environment = work_directory(tmp_path)
    done = run_phi3bot(["models"], environment, tmp_path, module="tests.support.looking_children")
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout)
    assert found["dumpable"] == 0, "the bot's process is not dumpable"
    for child in ("reader", "conversion", "unconfined"):
        looked = found[child]
        no_secret_in([looked["environ"], looked["own_block"], looked["parent_block"]], f"the {child} child")
        only_allowed_variables(looked["environ"], f"the {child} child")
        started_with = set(looked["own_block"].split("\0")) - {""}
        assert started_with <= {f"{n}={v}" for n, v in looked["environ"].items()}, "the kernel shows nothing more"
        # Root reads the bot's /proc/<pid>/environ: it is zeroed; anyone else is refused (not dumpable).
        assert looked["parent_block"].strip("\0") == "" or looked["parent_block"] == "PermissionError", child
    for child in ("reader", "conversion"):
        files = found[child]["files"]
        assert list(files.values()) == ["PermissionError", "PermissionError"], f"the {child} child read {files}"
    assert "WEBHOOK_SECRET_TOKEN" in found["unconfined"]["files"][str(tmp_path / ".env")], (
        "the files exist and are readable where nothing confines (the model's process is not confined)"
    )


@pytest.mark.timeout(240)
async def test_the_running_bot_shows_no_secret_its_model_process_gets_none_and_dies_with_it(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    environment = {**bot_environment(api, int4_store[0].root, tmp_path / "data"), **work_directory(tmp_path)}
    environment["TELEGRAM_BOT_TOKEN"] = api.token
    async with bot_process(environment, tmp_path) as bot:
        await bot.wait_for_log(" ready: ", 120)
        process = psutil.Process(bot.process.pid)
        try:
            shown = (await asyncio.to_thread(Path(f"/proc/{process.pid}/environ").read_bytes)).decode()
        except PermissionError:  # not root: the bot is not dumpable
            shown = ""
        assert shown.strip("\0") == "", f"the environment the bot was started with is zeroed: {shown[:3000]}"
        children = process.children(recursive=True)
        assert any("--multiprocessing-fork" in child.cmdline() for child in children), "the model's process"
        for child in children:
            where = f"child {child.cmdline()}"
            no_secret_in(child.environ(), where, (*SECRETS, api.token, api.token.split(":")[1]))
            only_allowed_variables(child.environ(), where)
        bot.process.send_signal(signal.SIGKILL)
        await gone(children)  # before waiting for the bot, which waits for its stderr: children hold it open


async def gone(children: list[psutil.Process]) -> None:
    """Within seconds of their parent's SIGKILL."""
    deadline = time.monotonic() + GONE_WITHIN_SECONDS
    while alive := [child for child in children if running(child)]:
        assert time.monotonic() < deadline, f"still running {GONE_WITHIN_SECONDS} s after the bot: {alive}"
        await asyncio.sleep(0.05)


def running(child: psutil.Process) -> bool:
    try:
        return child.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(120)
async def test_a_conversion_and_a_file_reader_die_with_a_parent_killed_by_sigkill(tmp_path: Path) -> None:
    environment = work_directory(tmp_path)
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.lingering_children",
        "models",
        cwd=tmp_path,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
    )
    assert parent.stdout is not None
    try:
        lines = [await asyncio.wait_for(parent.stdout.readline(), 60) for _ in range(2)]
        children = [psutil.Process(int(line.split()[1])) for line in lines]
        assert [child.ppid() for child in children] == [parent.pid, parent.pid], lines
        parent.send_signal(signal.SIGKILL)
        await gone(children)  # before waiting for the parent, which waits for its stdout: children hold it open
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


def test_the_bots_main_module_starts_no_thread() -> None:
    """A spawned child imports it before its confinement, which binds only threads started after it."""
    count = "import os, bot.terminal.cli; print(len(os.listdir('/proc/self/task')))"
    done = subprocess.run([sys.executable, "-c", count], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "1", done.stdout
