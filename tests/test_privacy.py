"""What people send stays between them and the bot: the files ``phi3bot run`` writes are its user's alone, and its
log at INFO names kinds and lengths, never what anyone wrote."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devkit.bot_api_server import BOT_USER, FakeBotApi
from devkit.harness import STRANGER, USER, photo_bytes, wait_answers
from devkit.processes import bot_environment, bot_process, run_phi3bot
from model_store.store import ModelEntry, ModelStore

MARK = "Zebra-Quokka-7731"  # a word that appears nowhere but in what people send


@contextmanager
def usual_umask() -> Iterator[None]:
    """The umask most shells start with: without the bot's own, its files would be readable by everyone."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def shared_paths(root: Path) -> list[str]:
    """Files and directories under ``root`` that another user of the machine could read or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


@pytest.mark.timeout(240)
async def test_conversations_are_private_to_the_bots_user_and_no_words_reach_the_log(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "older").mkdir(parents=True)  # as an older release left it, under a shell's umask
    (data / "older").chmod(0o755)
    (data / "notes.txt").write_text("x")
    (data / "notes.txt").chmod(0o644)
    data.chmod(0o755)
    elsewhere = tmp_path / "elsewhere"  # DATABASE_PATH outside DATA_DIR, made by an older release under umask 022
    elsewhere.mkdir()
    database = elsewhere / "history.sqlite3"
    database.touch()
    database.chmod(0o644)
    (tmp_path / ".env").write_text("EDIT_INTERVAL_SECONDS=0.2\n")
    (tmp_path / ".env").chmod(0o644)
    environment = bot_environment(api, int4_store[0].root, data, LOG_LEVEL="INFO", DATABASE_PATH=str(database))
    with usual_umask():
        async with bot_process(environment, tmp_path) as bot:
            await bot.wait_for_log("ready: @", 120)
            api.push_message(USER, f"What do you think of {MARK}?", user_id=USER)
            api.push_message(USER, photo=photo_bytes(), caption=f"And in this photo, {MARK}?", user_id=USER)
            await wait_answers(api, USER, 2, timeout=120)
            api.push_message(USER, f"/persona Speak like {MARK}.", user_id=USER)
            api.push_message(USER, f"/{MARK.lower().replace('-', '_')} please", user_id=USER)
            api.push_message(USER, f"/convert {MARK}/model", user_id=USER)
            api.push_message(USER, document=(b"%PDF-1.4 broken", f"{MARK}.pdf", "application/pdf"), caption=MARK)
            api.push_message(STRANGER, f"Hello {MARK}", user_id=STRANGER)
            group = -100777
            api.push_message(group, f"@{BOT_USER['username']} {MARK} here", user_id=STRANGER, chat_type="supergroup")
            await api.wait_for(lambda: len(api.messages(STRANGER)) >= 1, 60, "the stranger's refusal")
            await api.wait_for(lambda: len(api.messages(USER)) >= 6, 60, "persona, hint, refusal, file")
            backup = data / "backup.sqlite3"
            copied = run_phi3bot(["backup", str(backup)], environment, tmp_path)
            assert copied.returncode == 0, copied.stderr
            await bot.wait_for_log("ready: @", 1)

    assert backup.is_file() and database.stat().st_size > 0
    assert shared_paths(data) == []
    assert [path for path in shared_paths(elsewhere) if "history.sqlite3" in path] == []
    assert "chmod 600 .env" in bot.stderr, "the shared .env is named"
    stored = b"".join(path.read_bytes() for path in elsewhere.glob("history.sqlite3*"))
    assert MARK.encode() in stored, "the words reached the bot (and its history)"
    assert MARK not in bot.stderr and MARK.lower() not in bot.stderr.lower(), bot.stderr[-3000:]
