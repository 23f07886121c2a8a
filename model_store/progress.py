"""One progress vocabulary for long model-store jobs, whatever shows it (a terminal bar or a Telegram message).

Jobs are split into phases with fixed weights, so a phase that reports its own fraction (bytes downloaded,
sub-models exported) moves one overall percentage that never goes backwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    phase: str
    percent: float
    detail: str = ""


ProgressCallback = Callable[[Progress], None]


def ignore_progress(_: Progress) -> None:
    """For callers that do not show progress."""


class PhasePlan:
    """Turns (phase, fraction of that phase) into an overall percentage."""

    def __init__(self, phases: Sequence[tuple[str, float]], callback: ProgressCallback) -> None:
        total = sum(weight for _, weight in phases)
        self._starts: dict[str, tuple[float, float]] = {}
        start = 0.0
        for name, weight in phases:
            share = 100.0 * weight / total
            self._starts[name] = (start, share)
            start += share
        self._callback = callback
        self._last = 0.0
        self._last_phase = ""

    def report(self, phase: str, fraction: float = 0.0, detail: str = "") -> None:
        start, share = self._starts[phase]
        percent = max(self._last, start + share * min(max(fraction, 0.0), 1.0))
        # Fine-grained sources (bytes, tensors) would flood a chat message; half a percent is visible enough.
        if phase == self._last_phase and percent - self._last < 0.5 and fraction < 1.0:
            return
        self._last = percent
        self._last_phase = phase
        self._callback(Progress(phase=phase, percent=round(percent, 1), detail=detail))


def format_elapsed(seconds: float) -> str:
    """A job's time so far, as its progress says it (and the bot's /stats its uptime)."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
