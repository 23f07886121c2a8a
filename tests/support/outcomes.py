"""Running a corpus of hostile files through an intake: each case's outcome, how fast, and as expected."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar


class HostileCase(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def expect(self) -> str: ...  # "ok", "rejected" or "either"

    @property
    def data(self) -> bytes: ...


C = TypeVar("C", bound=HostileCase)


def check_outcomes(cases: Iterable[C], outcome: Callable[[C], str], seconds: float = 5.0) -> Counter[str]:
    """Outcomes counted by the first word of each case's kind and the outcome ("pdf ok", "huge rejected"); any
    exception other than the intake's refusal fails with the case's kind in the traceback."""
    seen: Counter[str] = Counter()
    for case in cases:
        started = time.monotonic()
        result = outcome(case)
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"{case.kind} took {elapsed:.1f} s"
        if case.expect != "either":
            assert result == case.expect, f"{case.kind} ({len(case.data)} bytes): {result}"
        seen[f"{case.kind.split()[0]} {result}"] += 1
    return seen
