"""A heartbeat file for health checks: Docker's and Compose's ``healthcheck``, or a cron job or monitor.

From start-up to shutdown the bot's event loop rewrites ``DATA_DIR/heartbeat`` every few seconds, and
``phi3bot health`` reads how old it is. A fresh heartbeat says that the process is up and its event loop is not
stuck, which a restart can fix. It does not say that Telegram is reachable (the bot keeps retrying by itself,
and a restart would not help), nor does a bot without a model count as unhealthy (it still answers and can
/convert one); whether a model is loaded is written in the file and printed, for a person reading it.

A beat that cannot be written (a full disk, a volume gone read-only) is logged once and tried again at the next
beat: the heartbeat goes stale, so the bot shows unhealthy while its disk is, and fresh again once space is
freed, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

BEAT_SECONDS = 15.0
STALE_SECONDS = 4 * BEAT_SECONDS


class HeartbeatFile:
    """``details`` is called at each beat for what the file says besides the time (a model loaded or not)."""

    def __init__(
        self, path: Path, details: Callable[[], dict[str, object]] = dict, interval: float = BEAT_SECONDS
    ) -> None:
        self.path = path
        self.details = details
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.beat()
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.beat()

    def beat(self) -> None:
        """Written aside and renamed, so a health check never reads half a file."""
        beat = {"time": time.time(), "pid": os.getpid(), **self.details()}
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            partial.write_text(json.dumps(beat))
            partial.replace(self.path)
        except OSError as error:
            if not self._failing:
                log.error(
                    "cannot write the heartbeat %s (%s); trying again every %.0f s", self.path, error, self.interval
                )
            self._failing = True
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            return
        if self._failing:
            log.info("the heartbeat %s is written again", self.path)
        self._failing = False

    async def stop(self) -> None:
        """A bot that stopped is not healthy: the file goes with it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.path.unlink(missing_ok=True)


def check_heartbeat(path: Path, stale_seconds: float = STALE_SECONDS) -> tuple[bool, str]:
    """(healthy, a line saying why) from the heartbeat file at ``path``."""
    try:
        beat = json.loads(path.read_text())
        age = time.time() - float(beat["time"])
    except FileNotFoundError:
        return False, f"unhealthy: no heartbeat at {path} (the bot is not running, or still starting)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return False, f"unhealthy: unreadable heartbeat at {path}: {error}"
    if age > stale_seconds:
        return False, f"unhealthy: the last heartbeat is {age:.0f} s old (more than {stale_seconds:.0f} s)"
    model = "a model loaded" if beat.get("model_loaded") else "no model loaded"
    return True, f"healthy: heartbeat {age:.0f} s ago from process {beat.get('pid')}, {model}"
