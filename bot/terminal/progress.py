"""Model-store progress drawn in a terminal: a redrawn bar on a TTY, sparse lines in logs and pipes."""

from __future__ import annotations

import sys
from typing import TextIO

from model_store.progress import Progress

BAR_WIDTH = 30


class TerminalProgress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._interactive = self._stream.isatty()
        self._last_phase = ""
        self._last_percent = -100.0

    def __call__(self, update: Progress) -> None:
        if self._interactive:
            filled = int(BAR_WIDTH * update.percent / 100)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            line = f"\r[{bar}] {update.percent:5.1f}%  {update.phase}: {update.detail}"
            self._stream.write(line[:120].ljust(120))
            if update.percent >= 100:
                self._stream.write("\n")
        elif update.phase != self._last_phase or update.percent - self._last_percent >= 5 or update.percent >= 100:
            self._stream.write(f"{update.percent:5.1f}%  {update.phase}: {update.detail}\n")
            self._last_percent = update.percent
        self._last_phase = update.phase
        self._stream.flush()
