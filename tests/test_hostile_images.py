"""Over a thousand hostile files through the image intake: a picture or a friendly refusal, nothing else."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from engine.images import ImageLimits, ImageRejected, prepare_image
from tests.support.hostile_images import GENERATORS, Case, hostile_images

LIMITS = ImageLimits()


def outcome(case: Case) -> str:
    try:
        prepared = prepare_image(case.data, LIMITS)
    except ImageRejected as refusal:
        message = str(refusal)
        assert message.endswith(".") and len(message) < 200 and "Traceback" not in message, message
        assert "\\x" not in message and "Errno" not in message, f"{case.kind}: internals leak into {message!r}"
        return "rejected"
    pixels = prepared.pixels
    assert pixels.dtype.name == "uint8" and pixels.ndim == 3 and pixels.shape[2] == 3, case.kind
    assert pixels.flags["C_CONTIGUOUS"], case.kind
    assert LIMITS.min_side <= min(pixels.shape[:2]) and max(pixels.shape[:2]) <= LIMITS.max_side, case.kind
    return "ok"


def check(cases: list[Case]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for case in cases:
        started = time.monotonic()
        result = outcome(case)  # any other exception fails the test with the case's kind in the traceback
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"{case.kind} took {elapsed:.1f} s"
        if case.expect != "either":
            assert result == case.expect, f"{case.kind} ({case.name}, {len(case.data)} bytes): {result}"
        seen[f"{case.kind.split()[0]} {result}"] += 1
    return seen


def test_every_kind_of_hostile_file_gets_a_picture_or_a_kind_refusal() -> None:
    cases = list(hostile_images(len(GENERATORS) * 12))
    seen = check(cases)
    assert seen["valid ok"] and seen["truncated rejected"] and seen["not rejected"] and seen["huge rejected"]


@pytest.mark.slow
def test_a_thousand_and_more_hostile_files() -> None:
    cases = list(hostile_images(1200, seed=7))
    assert len(cases) > 1000
    seen = check(cases)
    assert sum(seen.values()) == len(cases)
