"""A background ticker for long library calls that report no progress of their own.

Exports and downloads run inside optimum and huggingface_hub; instead of patching them, progress is read
from what they leave on disk (bytes downloaded, sub-models written), and elapsed time keeps the message alive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType


class Heartbeat:
    """Calls ``tick(elapsed_seconds)`` every ``interval`` seconds while the ``with`` block runs."""

    def __init__(self, tick: Callable[[float], None], interval: float = 2.0) -> None:
        self._tick = tick
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-heartbeat", daemon=True)
        self._started = 0.0

    def __enter__(self) -> Heartbeat:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick(time.monotonic() - self._started)
