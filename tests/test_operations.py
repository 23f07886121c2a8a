"""What a self-hoster runs beside the bot: ``phi3bot health`` (the container health check) and ``phi3bot backup``."""

from __future__ import annotations

import asyncio
import errno
import json
import sqlite3
import time
from pathlib import Path

import pytest

from bot.cli import main
from bot.health import STALE_SECONDS, HeartbeatFile, check_heartbeat
from bot.history import ConversationKey, HistoryStore
from tests.support.harness import stored_messages


async def test_the_heartbeat_is_fresh_while_the_loop_runs_and_gone_after_stop(tmp_path: Path) -> None:
    path = tmp_path / "data" / "heartbeat"
    heartbeat = HeartbeatFile(path, lambda: {"model_loaded": True}, interval=0.05)
    heartbeat.start()
    first = json.loads(path.read_text())["time"]
    await asyncio.sleep(0.2)
    assert json.loads(path.read_text())["time"] > first, "rewritten while the loop runs"
    healthy, reason = check_heartbeat(path)
    assert healthy and "a model loaded" in reason
    await heartbeat.stop()
    assert not path.exists()
    healthy, reason = check_heartbeat(path)
    assert not healthy and reason.startswith("unhealthy: no heartbeat")


async def test_the_heartbeat_outlives_a_full_disk_and_is_fresh_again_once_space_is_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "heartbeat"
    heartbeat = HeartbeatFile(path, interval=0.05)
    heartbeat.start()
    real_write = Path.write_text

    def full_disk(self: Path, *args: object, **kwargs: object) -> int:
        if self.parent == tmp_path:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full_disk)
    await asyncio.sleep(0.5)
    before = json.loads(path.read_text())["time"]
    assert time.time() - before > 0.3, "not written while the disk is full"
    monkeypatch.undo()
    await asyncio.sleep(0.2)
    assert json.loads(path.read_text())["time"] > before and check_heartbeat(path)[0], "fresh again, no restart"
    failures = [record for record in caplog.records if "cannot write the heartbeat" in record.getMessage()]
    assert len(failures) == 1, "logged once, not at every beat"
    await heartbeat.stop()


def test_a_stale_or_damaged_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    path.write_text(json.dumps({"time": time.time() - STALE_SECONDS - 1, "pid": 1}))
    healthy, reason = check_heartbeat(path)
    assert not healthy and "old" in reason
    path.write_text("{half a fi")
    assert not check_heartbeat(path)[0]


def test_the_health_command_exits_by_the_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert main(["health"]) == 1
    (tmp_path / "heartbeat").write_text(json.dumps({"time": time.time(), "pid": 1, "model_loaded": False}))
    assert main(["health"]) == 0
    assert "healthy" in capsys.readouterr().out


async def test_backup_copies_the_history_while_it_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    history = await HistoryStore.open(tmp_path / "data" / "history.sqlite3")
    try:
        key = ConversationKey(5)
        for number in range(3):
            await history.add_user_message(key, f"question {number}", telegram_message_id=number + 1)
        copy = tmp_path / "backup.sqlite3"
        assert await asyncio.to_thread(main, ["backup", str(copy)]) == 0, "the bot's connection stays open"
    finally:
        await history.close()
    with sqlite3.connect(copy) as database:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    restored = await HistoryStore.open(copy)
    try:
        assert [m.text for m in await stored_messages(restored, ConversationKey(5))] == [
            f"question {n}" for n in range(3)
        ]
    finally:
        await restored.close()
    assert main(["backup", str(copy)]) == 1, "an existing file is not overwritten"
    assert "exists already" in capsys.readouterr().err
