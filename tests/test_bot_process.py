"""The bot as its users run it: `phi3bot run` in its own process, stopped by SIGTERM or killed outright.

The stand-in Bot API server also posts updates to the bot's webhook the way Telegram does (with the secret
token header), so this covers the command line, settings from the environment, PTB's webhook server and
the shutdown paths that the in-process tests cannot reach.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from bot import texts
from bot.history import ConversationKey, HistoryStore, StoredMessage
from bot.reply_stream import CURSOR
from model_store.store import ModelEntry, ModelStore
from tests.support.bot_api_server import FakeBotApi
from tests.support.harness import USER, bot_settings, running_bot, stored_messages, wait_answers
from tests.support.processes import bot_environment, bot_process

SECRET = "webhook_Secret-42"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def read_history(data_dir: Path, chat: int) -> list[StoredMessage]:
    history = await HistoryStore.open(data_dir / "history.sqlite3")
    try:
        return await stored_messages(history, ConversationKey(chat))
    finally:
        await history.close()


@pytest.mark.timeout(240)
async def test_webhook_mode_answers_and_sigterm_shuts_down_cleanly(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    port = free_port()
    hook = f"http://127.0.0.1:{port}/telegram/hook"
    environment = bot_environment(
        api,
        int4_store[0].root,
        tmp_path / "data",
        WEBHOOK_URL=hook,
        WEBHOOK_LISTEN="127.0.0.1",
        WEBHOOK_PORT=str(port),
        WEBHOOK_SECRET_TOKEN=SECRET,
    )
    async with bot_process(environment, tmp_path) as bot:
        await api.wait_for(lambda: api.webhook_url is not None, 120, "setWebhook")
        assert api.webhook_url == hook and api.webhook_secret == SECRET

        api.push_message(USER, "Hello there, what can you do?", user_id=USER)
        await wait_answers(api, USER, 1, timeout=120)
        assert 200 in api.webhook_statuses

        async with aiohttp.ClientSession() as session:
            forged = {"update_id": 999, "message": {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "private"}}}
            headers = {"X-Telegram-Bot-Api-Secret-Token": "wrong"}
            async with session.post(hook, json=forged, headers=headers) as response:
                assert response.status == 403, "an update without the secret is refused"
        bot.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(bot.process.wait(), 60)

    assert code == 0, bot.stderr[-3000:]
    assert api.token not in bot.stderr and api.token.split(":")[1] not in bot.stderr, "no token in the logs"
    assert " ERROR " not in bot.stderr and " CRITICAL " not in bot.stderr, bot.stderr[-3000:]
    assert "Application.stop() complete" in bot.stderr, "shut down through PTB's graceful path"
    stored = await read_history(tmp_path / "data", USER)
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "complete")]


async def start_a_long_answer(api: FakeBotApi) -> None:
    api.push_message(USER, "Tell me everything.", user_id=USER)
    await api.wait_for(lambda: any(m.text.endswith("▌") for m in api.messages(USER)), 120, "an answer streaming")


@pytest.mark.timeout(240)
async def test_sigterm_during_an_answer_stops_it_quickly_and_keeps_its_text(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    environment = bot_environment(api, int4_store[0].root, tmp_path / "data", MAX_NEW_TOKENS="4000")
    async with bot_process(environment, tmp_path, "tests.support.long_answers_bot") as bot:
        await start_a_long_answer(api)
        bot.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(bot.process.wait(), 30)
    assert code == 0, bot.stderr[-3000:]
    [answer] = api.messages(USER)
    assert answer.reply_markup is None and answer.text.endswith(texts.footer("cancelled", answer.text).strip())
    stored = await read_history(tmp_path / "data", USER)
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "cancelled")]
    assert stored[1].text and answer.text.startswith(stored[1].text[:20]), "the partial answer is kept"


@pytest.mark.timeout(300)
async def test_kill_9_during_an_answer_leaves_a_sound_database_and_the_bot_carries_on(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    environment = bot_environment(api, int4_store[0].root, data, MAX_NEW_TOKENS="4000")
    async with bot_process(environment, tmp_path, "tests.support.long_answers_bot") as bot:
        await start_a_long_answer(api)
        bot.process.send_signal(signal.SIGKILL)
        assert await bot.process.wait() == -signal.SIGKILL

    with sqlite3.connect(data / "history.sqlite3") as database:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    async with running_bot(api, bot_settings(api, int4_store[0].root, data)) as restarted:
        [(_, user_status), (_, answer_status)] = [
            (m.role, m.status) for m in await stored_messages(restarted.services.history, ConversationKey(USER))
        ]
        assert (user_status, answer_status) == ("complete", "cancelled"), "the interrupted answer is marked"
        [killed] = api.messages(USER)
        assert killed.reply_markup is None and killed.text.endswith(texts.INTERRUPTED.strip()), killed.text
        api.push_message(USER, "Are you back?", user_id=USER)
        await wait_answers(api, USER, 2, timeout=60)
        stored = await stored_messages(restarted.services.history, ConversationKey(USER))
        assert [m.status for m in stored] == ["complete", "cancelled", "complete", "complete"]


async def test_the_models_process_ends_when_the_bot_is_killed(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    environment = bot_environment(api, int4_store[0].root, tmp_path / "data", MAX_NEW_TOKENS="8000")
    async with bot_process(environment, tmp_path, "tests.support.long_answers_bot") as bot:
        await start_a_long_answer(api)
        model = psutil.Process(bot.process.pid).children(recursive=True)
        assert [child.name() for child in model], "the model runs in a process of its own"
        bot.process.send_signal(signal.SIGKILL)
        assert await bot.process.wait() == -signal.SIGKILL
    await api.wait_for(lambda: not any(running(child) for child in model), 3, "the model's process to end with the bot")


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's exit is collected by whoever adopted it, if anyone)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def words(text: str) -> str:
    return "".join(text.removesuffix(CURSOR.strip()).split())


@pytest.mark.timeout(400)
async def test_kill_9_during_a_three_message_answer_repairs_every_part(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    environment = bot_environment(api, int4_store[0].root, data, MAX_NEW_TOKENS="6000")
    async with bot_process(environment, tmp_path, "tests.support.long_answers_bot") as bot:
        api.push_message(USER, "Tell me everything, at length.", user_id=USER)
        await api.wait_for(
            lambda: len(api.messages(USER)) == 3 and api.messages(USER)[-1].text.endswith(CURSOR), 240, "a 3rd part"
        )
        bot.process.send_signal(signal.SIGKILL)
        assert await bot.process.wait() == -signal.SIGKILL
    shown = [(m.message_id, m.text) for m in api.messages(USER)]

    async with running_bot(api, bot_settings(api, int4_store[0].root, data)) as restarted:
        _, answer = await stored_messages(restarted.services.history, ConversationKey(USER))
        assert await restarted.services.history.mark_interrupted() == [], "repaired once, and settled"
    parts = api.messages(USER)
    assert answer.status == "cancelled"
    assert [m.message_id for m in parts] == list(answer.telegram_message_ids)
    assert [m.message_id for m in parts][:3] == [message_id for message_id, _ in shown], "repaired in place"
    assert words(answer.text).startswith(words("".join(text for _, text in shown))), "no word shown was lost"
    assert all(m.reply_markup is None and not m.text.endswith(CURSOR) for m in parts), [m.text[-80:] for m in parts]
    assert parts[-1].text.endswith(texts.INTERRUPTED.strip())


@pytest.mark.timeout(300)
async def test_sigterm_in_a_flood_storm_exits_within_seconds_and_the_next_start_finishes_the_answer(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    """Docker kills a container 10 s after SIGTERM; Telegram's retry_after can be longer than that."""
    data = tmp_path / "data"
    environment = bot_environment(api, int4_store[0].root, data, MAX_NEW_TOKENS="4000")
    async with bot_process(environment, tmp_path, "tests.support.long_answers_bot") as bot:
        await start_a_long_answer(api)
        for method in ("editMessageText", "sendMessage"):
            api.storm(method, 600, retry_after=30)
        await api.wait_for(lambda: any(c.status == 429 for c in api.calls), 30, "flood control")
        await asyncio.sleep(1.0)  # a few more 429s: one storm
        started = time.monotonic()
        bot.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(bot.process.wait(), 120)
        took = time.monotonic() - started
    assert code == 0, bot.stderr[-3000:]
    assert took < 5.0, f"shutdown took {took:.1f} s"
    assert " ERROR " not in bot.stderr, bot.stderr[-3000:]
    assert bot.stderr.count(" WARNING bot.reply_stream: Telegram's flood control") == 1, "one warning per storm"
    [answer] = api.messages(USER)
    assert answer.text.endswith(CURSOR), "Telegram refused the final edit"

    for method in ("editMessageText", "sendMessage"):
        api.storm(method, 0)
    async with running_bot(api, bot_settings(api, int4_store[0].root, data)) as restarted:
        _, stored = await stored_messages(restarted.services.history, ConversationKey(USER))
        assert await restarted.services.history.mark_interrupted() == [], "finished once, and settled"
    assert stored.status == "cancelled" and stored.telegram_message_ids == (answer.message_id,)
    assert answer.reply_markup is None and answer.text.endswith(texts.footer("cancelled", stored.text).strip())
    assert words(answer.text).startswith(words(stored.text)[:20])
