"""The bot as its users run it: `phi3bot run` in its own process, stopped by SIGTERM or killed outright.

The stand-in Bot API server also posts updates to the bot's webhook the way Telegram does (with the secret
token header), so this covers the command line, settings from the environment, PTB's webhook server and
the shutdown paths that the in-process tests cannot reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from telegram.error import InvalidToken

from bot import texts
from bot.app import RedactSecrets, build_application, setup
from bot.history import ConversationKey, HistoryStore, StoredMessage
from bot.output.edits import CURSOR
from bot.running.webhook import SECRET_HEADER
from devkit.bot_api_server import FakeBotApi
from devkit.harness import (
    ADMIN,
    USER,
    answer_drafts,
    bot_settings,
    has_retry,
    running_bot,
    stored_messages,
    streaming,
    wait_answers,
)
from devkit.hub_server import StandInHub
from devkit.processes import bot_environment, bot_process, free_port, listening, run_phi3bot
from model_store.store import ModelEntry, ModelStore
from tests.support.hub_checkpoints import push_clip, push_phi3v

SECRET = "webhook_Secret-42"
HF_TOKEN = "hf_aHuggingFaceTokenForTheTests0123"
OTHER_TOKEN = "654321:AAHanotherBotsTokenThatIsNotKnown_0"


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


async def start_a_long_answer(api: FakeBotApi) -> dict[str, Any]:
    question = api.push_message(USER, "Tell me everything.", user_id=USER)
    await api.wait_for(lambda: streaming(api, USER), 120, "an answer streaming")
    return question


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
    assert has_retry(answer), "no Stop button left, a Retry button instead"
    assert answer.text.endswith(texts.footer("cancelled", answer.text).strip())
    stored = await read_history(tmp_path / "data", USER)
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "cancelled")]
    assert stored[1].text and answer.text.startswith(stored[1].text[:20]), "the partial answer is kept"


@pytest.mark.timeout(300)
async def test_kill_9_during_a_drafted_answer_leaves_a_sound_database_and_the_restart_sends_it(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    """The answer was only a draft, which vanishes by itself: the next start sends its saved text as a message."""
    data = tmp_path / "data"
    environment = bot_environment(api, int4_store[0].root, data, MAX_NEW_TOKENS="4000")
    async with bot_process(environment, tmp_path, "tests.support.long_answers_bot") as bot:
        question = await start_a_long_answer(api)
        bot.process.send_signal(signal.SIGKILL)
        assert await bot.process.wait() == -signal.SIGKILL
    assert api.messages(USER) == [], "a draft, no message"
    last_draft = answer_drafts(api, USER)[-1]

    with sqlite3.connect(data / "history.sqlite3") as database:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    async with running_bot(api, bot_settings(api, int4_store[0].root, data)) as restarted:
        [(_, user_status), (_, answer_status)] = [
            (m.role, m.status) for m in await stored_messages(restarted.services.history, ConversationKey(USER))
        ]
        assert (user_status, answer_status) == ("complete", "cancelled"), "the interrupted answer is marked"
        [killed] = api.messages(USER)
        assert killed.reply_markup is None and killed.text.endswith(texts.INTERRUPTED.strip()), killed.text
        assert killed.reply_to == question["message_id"], "the repaired answer replies to its question"
        assert await restarted.services.history.mark_interrupted() == [], "repaired once, and settled"
        api.push_message(USER, "Are you back?", user_id=USER)
        await wait_answers(api, USER, 2, timeout=60)
        stored = await stored_messages(restarted.services.history, ConversationKey(USER))
        assert [m.status for m in stored] == ["complete", "cancelled", "complete", "complete"]
    assert stored[1].telegram_message_ids == (killed.message_id,) and killed.edits == [killed.text], "sent anew"
    assert words(last_draft) in words(stored[1].text), "no word shown was lost"


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
    environment = bot_environment(api, int4_store[0].root, data, MAX_NEW_TOKENS="6000", STREAM_DRAFTS="false")
    async with bot_process(environment, tmp_path, "tests.support.long_answers_bot") as bot:
        api.push_message(USER, "Tell me everything, at length.", user_id=USER)
        await api.wait_for(  # edited once: the bot has its id recorded (a kill before that leaves it unknown)
            lambda: (
                len(api.messages(USER)) == 3
                and len(api.messages(USER)[-1].edits) > 1
                and api.messages(USER)[-1].text.endswith(CURSOR)
            ),
            240,
            "a 3rd part",
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
    environment = bot_environment(api, int4_store[0].root, data, MAX_NEW_TOKENS="4000", STREAM_DRAFTS="false")
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
    assert bot.stderr.count(" WARNING bot.output.retries: Telegram's flood control") == 1, "one warning per storm"
    [answer] = api.messages(USER)
    assert answer.text.endswith(CURSOR), "Telegram refused the final edit"

    for method in ("editMessageText", "sendMessage"):
        api.storm(method, 0)
    async with running_bot(api, bot_settings(api, int4_store[0].root, data)) as restarted:
        _, stored = await stored_messages(restarted.services.history, ConversationKey(USER))
        assert await restarted.services.history.mark_interrupted() == [], "finished once, and settled"
    # The model wrote on while the edits waited, so the whole answer may now need a second message.
    parts = api.messages(USER)
    assert parts[0].message_id == answer.message_id, "finished in place"
    assert stored.status == "cancelled" and stored.telegram_message_ids == tuple(m.message_id for m in parts)
    assert all(m.reply_markup is None for m in parts)
    assert parts[-1].text.endswith(texts.footer("cancelled", stored.text).strip())
    assert words("".join(m.text for m in parts)).startswith(words(stored.text)[:20])


@pytest.mark.timeout(300)
async def test_a_busy_group_acknowledges_stop_at_once_and_sigterm_exits_within_seconds(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    """The issue's goal: after 20 quick replies in a group (Telegram's 20 a minute spent, but for the reserve kept
    for Stop), /stop is acknowledged within 2 s and SIGTERM exits within 5 s, however many answers' final texts
    wait for the group's budget (four, in the group and three of its topics); the final text that had to wait is
    shown by the next start."""
    group, data = -1006001, tmp_path / "data"
    api.forums.add(group)  # a forum: each topic a conversation of its own, answered at once
    environment = bot_environment(
        api, int4_store[0].root, data, MAX_NEW_TOKENS="4000", ALLOWED_CHAT_IDS=str(group), LOG_LEVEL="DEBUG"
    )
    async with bot_process(environment, tmp_path, "tests.support.long_answers_bot") as bot:
        for _ in range(20):
            api.push_message(group, "/model", user_id=ADMIN)
        await api.wait_for(lambda: len(api.calls_of("sendMessage", group)) == 18, 60, "quick replies")  # a reserve
        for topic, member in ((11, 31), (12, 32), (13, 33)):  # more answers whose final texts will wait in line
            api.push_message(group, f"@phi3_test_bot tell me a story, {member}", user_id=member, thread_id=topic)
        question = api.push_message(group, "@phi3_test_bot tell me everything", user_id=USER)
        await bot.wait_for_log("has no room for a streaming", 60)  # answering, its placeholder not queued
        asked = time.monotonic()
        api.push_message(group, "/stop", user_id=USER)
        await api.wait_for(lambda: texts.STOPPING in api.visible_text(group), 10, "the acknowledgement")
        acknowledged = time.monotonic() - asked
        await asyncio.sleep(1.0)  # the stopped answer's final text is in line too now
        started = time.monotonic()
        bot.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(bot.process.wait(), 60)
        took = time.monotonic() - started
    assert code == 0, bot.stderr[-3000:]
    assert acknowledged < 2.0, f"/stop acknowledged after {acknowledged:.1f} s"
    assert took < 5.0, f"shutdown took {took:.1f} s"
    assert " ERROR " not in bot.stderr, bot.stderr[-3000:]

    async with running_bot(api, bot_settings(api, int4_store[0].root, data, allowed_chat_ids=str(group))) as restarted:
        stored = await stored_messages(restarted.services.history, ConversationKey(group))
        assert await restarted.services.history.mark_interrupted() == [], "finished once, and settled"
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "cancelled")]
    answer = stored[1]
    parts = [m for m in api.messages(group) if m.message_id in answer.telegram_message_ids]
    assert parts and parts[0].reply_to == question["message_id"] and all(m.reply_markup is None for m in parts)
    assert parts[-1].text.endswith(texts.footer("cancelled", answer.text).strip()), "finished by the next start"


async def post(url: str, update: dict[str, Any], secret: str | None = None) -> int:
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    async with aiohttp.ClientSession() as session, session.post(url, json=update, headers=headers) as response:
        return response.status


@pytest.mark.timeout(240)
async def test_webhook_without_a_secret_setting_uses_a_random_one_and_refuses_forged_updates(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    port = free_port()
    hook = f"http://127.0.0.1:{port}/telegram/hook"
    environment = bot_environment(
        api, int4_store[0].root, tmp_path / "data", WEBHOOK_URL=hook, WEBHOOK_LISTEN="127.0.0.1", WEBHOOK_PORT=str(port)
    )
    async with bot_process(environment, tmp_path) as bot:
        await api.wait_for(lambda: api.webhook_url is not None, 120, "setWebhook")
        await api.wait_for(lambda: listening(port), 30, "the webhook's listener")
        secret = api.webhook_secret
        assert secret is not None and re.fullmatch(r"[A-Za-z0-9_-]{32,256}", secret), "a secret Telegram accepts"

        admin = {"id": ADMIN, "is_bot": False, "first_name": "Admin"}
        forged = {
            "update_id": 999,
            "message": {
                "message_id": 1,
                "date": 0,
                "chat": {"id": ADMIN, "type": "private", "first_name": "Admin"},
                "from": admin,
                "text": "/convert someone/remote-code-repo",
                "entities": [{"type": "bot_command", "offset": 0, "length": 8}],
            },
        }
        assert await post(hook, forged) == 403, "an update without the secret is refused"
        assert await post(hook, forged, "guessed") == 403, "an update with a wrong secret is refused"
        api.push_message(USER, "Hello there, what can you do?", user_id=USER)
        await wait_answers(api, USER, 1, timeout=120)
        assert 200 in api.webhook_statuses
        assert api.visible_text(ADMIN) == [], "the forged /convert reached no handler"
        bot.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(bot.process.wait(), 60)
    assert code == 0, bot.stderr[-3000:]
    assert secret not in bot.stderr, "the secret is redacted from the log, python-telegram-bot's DEBUG lines included"


async def raw_post(
    port: int, path: str, headers: dict[str, str], body_bytes: int, *, chunked: bool = False
) -> tuple[str, str]:
    """A request written by hand: its headers, then a pause of up to 3 s for an answer before any of the body
    is sent, then the body (as much of it as the server takes).  Returns the status line answered before the
    body ("" if none) and the one answered in the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [f"POST {path} HTTP/1.1", "Host: bot.example.com", *(f"{name}: {value}" for name, value in headers.items())]
    if chunked:
        head.append("Transfer-Encoding: chunked")
    else:
        head.append(f"Content-Length: {body_bytes}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    await writer.drain()
    try:
        early = (await asyncio.wait_for(reader.readline(), 3)).decode().strip()
    except TimeoutError:
        early = ""
    piece = b"x" * 1024 * 1024
    with contextlib.suppress(ConnectionError):
        for _ in range(0, body_bytes, len(piece)):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    final = early
    if not early:
        with contextlib.suppress(ConnectionError, TimeoutError):
            final = (await asyncio.wait_for(reader.readline(), 30)).decode().strip()
    writer.close()
    return early, final


@pytest.mark.timeout(240)
async def test_the_webhook_refuses_from_the_headers_so_strangers_cannot_fill_the_bots_memory(
    api: FakeBotApi, tmp_path: Path
) -> None:
    """python-telegram-bot's own server read each body whole (up to 100 MB) before it checked the secret."""
    port = free_port()
    hook = f"http://127.0.0.1:{port}/telegram/hook"
    environment = bot_environment(
        api,
        tmp_path / "store",
        tmp_path / "data",
        WEBHOOK_URL=hook,
        WEBHOOK_PORT=str(port),
        WEBHOOK_SECRET_TOKEN=SECRET,
    )
    environment.pop("WEBHOOK_LISTEN", None)
    async with bot_process(environment, tmp_path) as bot:
        await bot.wait_for_log(" ready: ", 120)
        assert api.webhook_url == hook and listening(port), "ready once Telegram knows the webhook and it listens"
        process = psutil.Process(bot.process.pid)
        listeners = [c.laddr for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert [(address.ip, address.port) for address in listeners] == [("127.0.0.1", port)], "by default"

        before = process.memory_info().rss
        wrong = {SECRET_HEADER: "guessed", "Content-Type": "application/json"}
        for _ in range(6):
            assert await raw_post(port, "/telegram/hook", wrong, 99 * 1024 * 1024) == ("HTTP/1.1 403 Forbidden",) * 2
        missing = {"Content-Type": "application/json"}
        assert await raw_post(port, "/telegram/hook", missing, 50 * 1024 * 1024) == ("HTTP/1.1 403 Forbidden",) * 2
        assert (
            await raw_post(port, "/elsewhere", {SECRET_HEADER: SECRET}, 50 * 1024 * 1024)
            == ("HTTP/1.1 404 Not Found",) * 2
        )
        grown = process.memory_info().rss - before
        assert grown < 20 * 1024 * 1024, f"the bot grew by {grown / 2**20:.0f} MB"

        right = {SECRET_HEADER: SECRET, "Content-Type": "application/json"}
        too_large = ("HTTP/1.1 413 Request Entity Too Large",) * 2
        assert await raw_post(port, "/telegram/hook", right, 1024 * 1024 + 1) == too_large, "refused unread"
        early, final = await raw_post(port, "/telegram/hook", right, 3 * 1024 * 1024, chunked=True)
        assert early == "" and final == "HTTP/1.1 400 Bad Request", "a body of unknown length is cut off at 1 MB"
        async with aiohttp.ClientSession() as session:
            async with session.get(hook, headers={SECRET_HEADER: SECRET}) as response:
                assert response.status == 405, "only POST"
            broken = b'{"update_id": 5, "message": {"text": "words of a private message'
            async with session.post(hook, data=broken, headers=right) as response:
                assert response.status == 400, "malformed JSON"

        api.push_message(USER, "/help", user_id=USER)
        await api.wait_for(lambda: bool(api.messages(USER)), 60, "the answer to /help")
        assert api.webhook_statuses == [200], "Telegram's update, with the secret, is taken"
        bot.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(bot.process.wait(), 60)
    assert code == 0, bot.stderr[-3000:]
    assert "words of a private message" not in bot.stderr, "a body is never logged"
    assert (
        "WARNING bot.running.webhook: the webhook received a body that is not an update (JSONDecodeError)" in bot.stderr
    )
    assert " ERROR " not in bot.stderr and "Traceback" not in bot.stderr, bot.stderr[-3000:]
    [ready] = [line for line in bot.lines if " ready: " in line]
    assert f"INFO bot.app: ready: @phi3_test_bot (https://t.me/phi3_test_bot), webhook at {hook}" in ready, ready


async def test_the_bot_says_once_that_it_is_ready_with_its_username_and_link(api: FakeBotApi, tmp_path: Path) -> None:
    environment = bot_environment(api, tmp_path / "store", tmp_path / "data")
    async with bot_process(environment, tmp_path) as bot:
        await bot.wait_for_log(" ready: ", 120)
        assert [call.method for call in api.calls][:3] == ["getMe", "setMyCommands", "deleteWebhook"], "start-up done"
        api.push_message(USER, "/help", user_id=USER)
        await api.wait_for(lambda: bool(api.messages(USER)), 60, "the answer to /help")
        bot.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(bot.process.wait(), 60)
    assert code == 0, bot.stderr[-3000:]
    [ready] = [line for line in bot.lines if " ready: " in line]
    assert ready.rstrip().endswith(" INFO bot.app: ready: @phi3_test_bot (https://t.me/phi3_test_bot), polling")


@pytest.mark.parametrize(("method", "signum"), [("deleteWebhook", signal.SIGTERM), ("getMe", signal.SIGINT)])
async def test_a_signal_while_the_start_is_still_retrying_telegram_exits_at_once(
    api: FakeBotApi, tmp_path: Path, method: str, signum: signal.Signals
) -> None:
    """getMe comes before anything is opened, deleteWebhook after the history and the heartbeat are."""
    api.fail_next(method, 100, kind="5xx")
    environment = bot_environment(api, tmp_path / "store", tmp_path / "data")
    async with bot_process(environment, tmp_path) as bot:
        await bot.wait_for_log(f"cannot be reached yet ({method}: Bad Gateway)", 60)
        started = time.monotonic()
        bot.process.send_signal(signum)
        code = await asyncio.wait_for(bot.process.wait(), 60)
        took = time.monotonic() - started
    assert code == 0 and took < 5, (code, took, bot.stderr[-3000:])
    assert " ready: " not in bot.stderr and "Traceback" not in bot.stderr, bot.stderr[-3000:]
    assert not (tmp_path / "data" / "heartbeat").exists(), "closed on the way out"


def failed_start(
    environment: dict[str, str], workdir: Path, *secrets: str, module: str | None = None, wrapper: Sequence[str] = ()
) -> tuple[str, list[str]]:
    """Runs ``phi3bot run`` to its end; it must fail with exit code 2 within a minute, print nothing on stdout
    and keep the secrets out of everything it printed.  Returns its last line on stderr and the lines before it."""
    started = time.monotonic()
    done = run_phi3bot(["run"], {**environment, "LOG_LEVEL": "INFO"}, workdir, module=module, wrapper=wrapper)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    assert took < 60, f"a failed start took {took:.0f} s"
    assert done.stdout == ""
    for secret in secrets:
        assert secret not in done.stderr, f"a secret was printed: {done.stderr[-3000:]}"
        assert secret.split(":")[-1] not in done.stderr, f"a secret was printed: {done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    *before, last = done.stderr.strip().splitlines()
    return last, before


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("TELEGRAM_BOT_TOKEN", "notatoken", "Invalid TELEGRAM_BOT_TOKEN"),
        ("TELEGRAM_BOT_TOKEN", "123456:AAHstandInServerTestToken_0123456-", "Invalid TELEGRAM_BOT_TOKEN"),
        ("TELEGRAM_BOT_TOKEN", OTHER_TOKEN, "rejected the bot's token (401/404): check TELEGRAM_BOT_TOKEN"),
        ("TELEGRAM_API_BASE_URL", "http://127.0.0.1:{port}", "Invalid TELEGRAM_API_BASE_URL"),
        (
            "TELEGRAM_API_BASE_URL",
            "http://127.0.0.1:{port}/other/bot",
            "check TELEGRAM_BOT_TOKEN, and TELEGRAM_API_BASE_URL",
        ),
    ],
    ids=["not-a-token", "token-one-character-short", "token-rejected-401", "url-without-bot", "url-answering-404"],
)
async def test_a_bad_token_or_server_address_is_one_line_and_exit_2(
    api: FakeBotApi, tmp_path: Path, setting: str, value: str, expected: str
) -> None:
    environment = bot_environment(api, tmp_path / "store", tmp_path / "data")
    environment[setting] = value.format(port=api.port)
    token = environment["TELEGRAM_BOT_TOKEN"]
    last, before = await asyncio.to_thread(failed_start, environment, tmp_path, token, api.token)
    assert before == [] and expected in last, (before, last)
    assert setting in last


async def test_an_unreachable_server_is_tried_again_then_one_line_and_exit_2(api: FakeBotApi, tmp_path: Path) -> None:
    environment = bot_environment(api, tmp_path / "store", tmp_path / "data")
    environment["TELEGRAM_API_BASE_URL"] = f"http://127.0.0.1:{free_port()}/bot"  # nothing listens there
    last, before = await asyncio.to_thread(
        failed_start, environment, tmp_path, api.token, module="tests.support.quick_start_bot"
    )
    assert "could not be reached in 5 attempts" in last and "TELEGRAM_API_BASE_URL" in last, last
    assert len(before) == 4 and all("cannot be reached yet" in line for line in before), before


def a_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize(
    ("setting", "where", "expected"),
    [
        ("DATA_DIR", "file", "is a file, not a directory"),
        ("DATA_DIR", "file/data", "a part of its path is a file"),
        ("MODEL_STORE_DIR", "file", "is a file, not a directory"),
        ("MODEL_STORE_DIR", "file/models", "a part of its path is a file"),
    ],
    ids=["data-dir-is-a-file", "data-dir-under-a-file", "store-is-a-file", "store-under-a-file"],
)
async def test_an_unusable_directory_is_one_line_naming_it_and_exit_2(
    api: FakeBotApi, tmp_path: Path, setting: str, where: str, expected: str
) -> None:
    """Found before anything is opened or Telegram is asked (an unusable MODEL_STORE_DIR used to hang the start)."""
    a_file(tmp_path / "file")
    environment = bot_environment(api, tmp_path / "store", tmp_path / "data")
    environment[setting] = str(tmp_path / where)
    last, before = await asyncio.to_thread(failed_start, environment, tmp_path, api.token)
    assert before == [] and expected in last and f"check {setting}" in last, (before, last)
    assert api.calls == [], "nothing was asked of Telegram"


def without_root_overrides() -> list[str]:
    """Root may write into any directory and file (CAP_DAC_OVERRIDE): a test run as root runs the bot without
    that, through this command prefix."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("run as root without setpriv (util-linux): every file is writable")
    dropped = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={dropped}", f"--bounding-set={dropped}"]


def start_with_a_directory_it_cannot_write(api: FakeBotApi, work: Path, setting: str) -> tuple[str, list[str]]:
    wrapper = without_root_overrides()
    locked = work / "locked"
    locked.mkdir(mode=0o555)
    try:
        environment = bot_environment(api, work / "store", work / "data")
        environment[setting] = str(locked)
        return failed_start(environment, work, api.token, wrapper=wrapper)
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("setting", ["DATA_DIR", "MODEL_STORE_DIR"])
async def test_a_directory_this_user_cannot_write_is_one_line_naming_it_and_exit_2(
    api: FakeBotApi, tmp_path: Path, setting: str
) -> None:
    last, before = await asyncio.to_thread(start_with_a_directory_it_cannot_write, api, tmp_path, setting)
    assert before == [] and "cannot be written by this user" in last and f"check {setting}" in last, (before, last)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("corrupt", "is not a usable SQLite database"),
        ("newer", "was written by a newer phi3bot"),
        ("directory", "Cannot open the history database"),
    ],
)
async def test_an_unusable_history_database_is_one_line_and_exit_2(
    api: FakeBotApi, tmp_path: Path, damage: str, expected: str
) -> None:
    """Opened after the heartbeat started: a failure closes what was opened, so the process exits."""
    data = tmp_path / "data"
    database = data / "history.sqlite3"
    data.mkdir()
    if damage == "corrupt":
        database.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 64)
    elif damage == "newer":
        with sqlite3.connect(database) as newer:
            newer.execute("PRAGMA user_version = 999")
    else:
        database.mkdir()
    environment = bot_environment(api, tmp_path / "store", data)
    last, _ = await asyncio.to_thread(failed_start, environment, tmp_path, api.token)
    assert expected in last and "DATABASE_PATH" in last, last
    assert not (data / "heartbeat").exists(), "the heartbeat stopped with the start"


async def test_a_history_database_this_user_cannot_write_is_one_line_and_exit_2(
    api: FakeBotApi, tmp_path: Path
) -> None:
    """Left read-only (say, made by an earlier run as another user): found at the start, not at the first answer."""
    data = tmp_path / "data"
    async with await HistoryStore.open(data / "history.sqlite3"):
        pass
    for path in data.iterdir():
        path.chmod(0o444)
    try:
        environment = bot_environment(api, tmp_path / "store", data)
        last, _ = await asyncio.to_thread(
            failed_start, environment, tmp_path, api.token, wrapper=without_root_overrides()
        )
    finally:
        for path in data.iterdir():
            path.chmod(0o644)
    assert "could not be brought up to date or written" in last and "DATABASE_PATH" in last, last


@pytest.mark.parametrize("method", ["getMe", "setMyCommands", "deleteWebhook", "setWebhook"])
async def test_a_bot_api_server_answering_5xx_is_tried_again_then_one_line_and_exit_2(
    api: FakeBotApi, tmp_path: Path, request: pytest.FixtureRequest, method: str
) -> None:
    """deleteWebhook (polling) and setWebhook come after the history and the model's process are open."""
    port = free_port()
    webhook = {"WEBHOOK_URL": f"http://127.0.0.1:{port}/hook", "WEBHOOK_PORT": str(port)}
    opened = method in ("deleteWebhook", "setWebhook")
    store = request.getfixturevalue("int4_store")[0].root if opened else tmp_path / "store"
    environment = bot_environment(api, store, tmp_path / "data", **(webhook if method == "setWebhook" else {}))
    api.fail_next(method, 100, kind="5xx")
    last, before = await asyncio.to_thread(
        failed_start, environment, tmp_path, api.token, module="tests.support.quick_start_bot"
    )
    assert f"could not be reached in 5 attempts ({method}: Bad Gateway)" in last, last
    assert "TELEGRAM_API_BASE_URL" in last, last
    retries = [line for line in before if "cannot be reached yet" in line]
    assert len(retries) == 4 and all(f"({method}: Bad Gateway)" in line for line in retries), before
    assert [call.status for call in api.calls_of(method)] == [502] * 5
    assert not (tmp_path / "data" / "heartbeat").exists(), "the heartbeat stopped with the start"


async def test_a_webhook_port_in_use_is_one_line_and_exit_2(api: FakeBotApi, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environment = bot_environment(
            api,
            tmp_path / "store",
            tmp_path / "data",
            WEBHOOK_URL="https://bot.example.com/hook",
            WEBHOOK_PORT=str(port),
            WEBHOOK_SECRET_TOKEN=SECRET,
        )
        last, before = await asyncio.to_thread(failed_start, environment, tmp_path, api.token, SECRET)
    assert before == [] and f"cannot listen on 127.0.0.1:{port} (in use by another program)" in last, last
    assert "check WEBHOOK_LISTEN and WEBHOOK_PORT" in last
    assert api.calls == [], "found before Telegram is asked"


async def test_a_setup_that_fails_after_opening_the_history_closes_what_it_opened(
    api: FakeBotApi, tmp_path: Path
) -> None:
    """The history's connection thread left open kept a failed start from ever exiting."""
    settings = bot_settings(api, a_file(tmp_path / "store"), tmp_path / "data")
    application = build_application(settings)
    before = set(threading.enumerate())  # another test's history may still be closing in this process
    async with application:
        with pytest.raises(FileExistsError):
            await setup(application)
    assert (tmp_path / "data" / "history.sqlite3").exists(), "the history was opened"
    assert not (tmp_path / "data" / "heartbeat").exists(), "the heartbeat stopped"
    opened = [t for t in set(threading.enumerate()) - before if "_connection_worker_thread" in t.name]
    for thread in opened:  # a closed connection's thread ends after its last poll of its queue
        thread.join(5)
    assert not [thread for thread in opened if thread.is_alive()]


@pytest.mark.timeout(240)
async def test_a_bot_started_before_its_server_is_up_waits_for_it(
    int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    late = FakeBotApi(port=free_port())
    environment = bot_environment(late, int4_store[0].root, tmp_path / "data")
    async with bot_process(environment, tmp_path, "tests.support.quick_start_bot") as bot:
        await bot.wait_for_log("cannot be reached yet", 60)  # its first attempt found nothing
        async with late:
            late.push_message(USER, "Are you up?", user_id=USER)
            await wait_answers(late, USER, 1, timeout=120)
            bot.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(bot.process.wait(), 60) == 0


@pytest.mark.timeout(300)
async def test_a_conversion_runs_without_the_bots_secrets(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A repository's own Python code runs in the export's process, started by the conversion's
    (trust_remote_code): this checkpoint's code writes down the environment it was given, then ends the
    conversion (it may write where transformers copies code, and not read its own /proc entry there).  The
    Hugging Face token is not there either (the Hub's calls get it as an argument)."""
    leaky = tmp_path / "leaky-phi3v"
    shutil.copytree(tiny_checkpoint, leaky)
    store = tmp_path / "store"
    modules = tmp_path / "modules"  # where transformers copies code: the export may write there
    seen = modules / "conversion-environment"
    code = leaky / "configuration_phi3_v.py"
    code.write_text(
        code.read_text()
        + f"""

import os as _os
import pathlib as _pathlib

_given = repr(dict(_os.environ)).encode()  # all it was started with: nothing changed it yet
_pathlib.Path({str(seen)!r}).write_bytes(_given)
raise RuntimeError("the test ends the conversion here")
"""
    )
    shutil.copytree(int4_store[0].root, store, symlinks=True)
    environment = bot_environment(
        api, store, tmp_path / "data", WEBHOOK_SECRET_TOKEN=SECRET, HF_TOKEN=HF_TOKEN, HF_MODULES_CACHE=str(modules)
    )
    async with bot_process(environment, tmp_path) as bot:
        await api.wait_for(lambda: bool(api.calls_of("getUpdates")), 120, "polling")
        api.push_message(ADMIN, f"/convert {leaky} int8", user_id=ADMIN)
        await api.wait_for(
            lambda: any(t.startswith("❌") for t in api.visible_text(ADMIN)), 240, "the conversion ended"
        )
        bot.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(bot.process.wait(), 60)
    environment_seen = seen.read_bytes()
    assert b"'HF_HUB_OFFLINE': '1'" in environment_seen, "the repository's code did run, in the export's process"
    assert b"MODEL_STORE_DIR" not in environment_seen, "only the variables the bot's children need"
    for secret in (api.token, SECRET, HF_TOKEN):
        assert secret.encode() not in environment_seen, "a secret reached the conversion's process"
    assert HF_TOKEN not in bot.stderr


def _exporting(pid: int) -> bool:
    """Whether the export's process (model_store/convert/export.py) runs among ``pid``'s descendants."""
    for process in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "model_store.convert.export" in process.cmdline():
                return True
    return False


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("phase", "stop"),
    [
        ("the bot's look-up", "SIGTERM"),
        ("the conversion's look-up", "SIGTERM"),
        ("the download", "SIGTERM"),
        ("the export", "SIGTERM"),
        ("the export", "SIGKILL"),
    ],
)
async def test_sigterm_during_a_conversion_ends_it_and_its_processes_and_the_bot_within_5_s(
    api: FakeBotApi,
    hub: StandInHub,
    int4_store: tuple[ModelStore, ModelEntry],
    tiny_checkpoint: Path,
    tmp_path: Path,
    phase: str,
    stop: str,
) -> None:
    """A Hub that accepts requests and never answers them holds the look-ups (the bot's own, before it asks
    to run a repository's code, and the conversion's) and the download; the export runs checkpoint code that
    never ends.  Killed outright instead, the bot leaves none of its processes behind either: the conversion's
    dies with it, the export's with the conversion's."""
    store = tmp_path / "store"
    shutil.copytree(int4_store[0].root, store, symlinks=True)
    model = "phi-3.5-vision"
    if phase == "the bot's look-up":
        model = "someone/phi3v-finetune"
    if phase == "the download":
        push_clip(hub, tiny_checkpoint)
        push_phi3v(hub, "microsoft/Phi-3.5-vision-instruct", tiny_checkpoint)
    if phase == "the export":
        model = str(tmp_path / "never-ending-phi3v")
        shutil.copytree(tiny_checkpoint, model)
        code = Path(model) / "configuration_phi3_v.py"
        code.write_text(code.read_text() + "\nimport time as _time\n\n_time.sleep(3600)\n")
    hub.stall(".safetensors" if phase == "the download" else "")
    async with bot_process(bot_environment(api, store, tmp_path / "data"), tmp_path) as bot:
        await api.wait_for(lambda: bool(api.calls_of("getUpdates")), 120, "polling")
        api.push_message(ADMIN, f"/convert {model} int8", user_id=ADMIN)
        if phase == "the export":
            await api.wait_for(lambda: _exporting(bot.process.pid), 120, "the export's process")
        else:
            await api.wait_for(lambda: any(hub.stalled in path for _, path in hub.requests), 60, "a held request")
        processes = psutil.Process(bot.process.pid).children(recursive=True)
        started = time.monotonic()
        bot.process.send_signal(signal.Signals[stop])
        if stop == "SIGKILL":  # its processes first: they hold its stderr open, so waiting for it may hide them
            await api.wait_for(lambda: not any(running(process) for process in processes), 3, "its processes to end")
        code = await asyncio.wait_for(bot.process.wait(), 30)
        took = time.monotonic() - started
    assert code == (-signal.SIGKILL if stop == "SIGKILL" else 0), bot.stderr[-3000:]
    assert took < 5, f"the bot took {took:.1f} s to exit"
    expected = {"the bot's look-up": 1, "the export": 3}.get(phase, 2)  # the model's, the conversion's, the export's
    assert len(processes) >= expected, processes
    await api.wait_for(lambda: not any(running(process) for process in processes), 3, "its processes to end")


def test_secrets_are_redacted_from_log_lines_and_tracebacks() -> None:
    """python-telegram-bot's InvalidToken carries the token in its message, httpx logs URLs with the token."""
    token = "123456789:AAHZZtokenZZ-abcdefghijklmnopqrstuv"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets([token, SECRET]))
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    try:
        raise InvalidToken(f"The token `{token}` was rejected by the server.")
    except InvalidToken:
        logger.exception("POST %s failed (secret %s)", f"https://api.telegram.org/bot{token}/getMe", SECRET)
    finally:
        logger.removeHandler(handler)
    logged = stream.getvalue()
    assert "InvalidToken" in logged and "Traceback" in logged
    assert token not in logged and token.split(":")[1] not in logged and SECRET not in logged, logged
