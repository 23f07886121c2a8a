"""The bot as its users run it: `phi3bot run` in its own process, here in webhook mode, stopped by SIGTERM.

The stand-in Bot API server posts updates to the bot's webhook the way Telegram does (with the secret token
header), so this covers the command line, settings from the environment, PTB's webhook server and the
graceful shutdown path that the in-process tests cannot reach.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from bot.history import ConversationKey, HistoryStore
from model_store.store import ModelEntry, ModelStore
from tests.support.bot_api_server import FakeBotApi
from tests.support.harness import ADMIN, USER

SECRET = "webhook_Secret-42"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bot_environment(api: FakeBotApi, store_root: Path, data_dir: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[1]),
        "TELEGRAM_BOT_TOKEN": api.token,
        "TELEGRAM_API_BASE_URL": api.base_url,
        "TELEGRAM_FILE_BASE_URL": api.base_file_url,
        "WEBHOOK_URL": f"http://127.0.0.1:{port}/telegram/hook",
        "WEBHOOK_LISTEN": "127.0.0.1",
        "WEBHOOK_PORT": str(port),
        "WEBHOOK_SECRET_TOKEN": SECRET,
        "ADMIN_USER_IDS": str(ADMIN),
        "ALLOWED_USER_IDS": str(USER),
        "DATA_DIR": str(data_dir),
        "MODEL_STORE_DIR": str(store_root),
        "MAX_NEW_TOKENS": "24",
        "KV_CACHE_GB": "1",
        "LOG_LEVEL": "DEBUG",
    }


@pytest.mark.timeout(240)
async def test_webhook_mode_answers_and_sigterm_shuts_down_cleanly(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        cwd=tmp_path,  # no stray .env
        env=bot_environment(api, int4_store[0].root, tmp_path / "data", port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    logs = asyncio.create_task(process.stderr.read())
    try:
        await api.wait_for(lambda: api.webhook_url is not None, 120, "setWebhook")
        assert api.webhook_url == f"http://127.0.0.1:{port}/telegram/hook"
        assert api.webhook_secret == SECRET

        api.push_message(USER, "Hello there, what can you do?", user_id=USER)
        await api.wait_for(
            lambda: any(m.edits and m.reply_markup is None for m in api.messages(USER)), 120, "a finished answer"
        )
        assert 200 in api.webhook_statuses

        async with aiohttp.ClientSession() as session:
            forged = {"update_id": 999, "message": {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "private"}}}
            async with session.post(
                f"http://127.0.0.1:{port}/telegram/hook",
                json=forged,
                headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"},
            ) as response:
                assert response.status == 403, "an update without the secret is refused"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)
        stderr = (await logs).decode(errors="replace")

    assert code == 0, stderr[-3000:]
    assert api.token not in stderr and api.token.split(":")[1] not in stderr, "the token never reaches the logs"
    assert " ERROR " not in stderr and " CRITICAL " not in stderr, stderr[-3000:]
    assert "Application.stop() complete" in stderr, "shut down through PTB's graceful path"
    history = await HistoryStore.open(tmp_path / "data" / "history.sqlite3")
    try:
        stored = await history.window(ConversationKey(USER), 10)
    finally:
        await history.close()
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "complete")]
