"""What a self-hoster runs beside the bot: ``phi3bot health`` (the container health check) and ``phi3bot backup``,
each a process of its own, as they run (``phi3bot`` hardens the process it runs in: bot/running/secrecy.py)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from bot.history import ConversationKey, HistoryStore
from bot.running.health import STALE_SECONDS, HeartbeatFile, check_heartbeat
from devkit.harness import stored_messages
from devkit.processes import ROOT, run_phi3bot


def phi3bot(tmp_path: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    return run_phi3bot(list(args), environment, tmp_path, module="bot.terminal.cli")


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


def test_the_health_command_exits_by_the_heartbeat(tmp_path: Path) -> None:
    assert phi3bot(tmp_path, tmp_path, "health").returncode == 1
    (tmp_path / "heartbeat").write_text(json.dumps({"time": time.time(), "pid": 1, "model_loaded": False}))
    healthy = phi3bot(tmp_path, tmp_path, "health")
    assert healthy.returncode == 0 and "healthy" in healthy.stdout


async def test_backup_copies_the_history_while_it_is_open(tmp_path: Path) -> None:
    history = await HistoryStore.open(tmp_path / "data" / "history.sqlite3")
    try:
        key = ConversationKey(5)
        for number in range(3):
            await history.add_user_message(key, f"question {number}", telegram_message_id=number + 1)
        copy = tmp_path / "backup.sqlite3"
        done = await asyncio.to_thread(phi3bot, tmp_path, tmp_path / "data", "backup", str(copy))
        assert done.returncode == 0, f"the bot's connection stays open: {done.stderr}"
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
    again = phi3bot(tmp_path, tmp_path / "data", "backup", str(copy))
    assert again.returncode == 1 and "exists already" in again.stderr, "an existing file is not overwritten"
