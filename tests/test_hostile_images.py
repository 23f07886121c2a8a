"""Over a thousand hostile files through the image intake: a picture or a friendly refusal, nothing else; and
through the copy the bot keeps of each (bot/media/stills.py): no larger than the model can use, decoded as stored."""

from __future__ import annotations

from collections import Counter

import pytest

from bot import texts
from bot.media.decoding import ImageLimits, ImageRejected, prepare_image
from bot.media.stills import LONG_SIDE, still
from devkit.hostile_images import GENERATORS, Case, hostile_images
from tests.support.outcomes import check_outcomes

LIMITS = ImageLimits()


def refused(case: Case, refusal: ImageRejected) -> str:
    message = texts.refusal(refusal.reason, refusal.data)
    assert message.endswith(".") and len(message) < 200 and "Traceback" not in message, message
    assert "\\x" not in message and "Errno" not in message, f"{case.kind}: internals leak into {message!r}"
    return "rejected"


def outcome(case: Case) -> str:
    try:
        prepared = prepare_image(case.data, LIMITS)
    except ImageRejected as refusal:
        return refused(case, refusal)
    pixels = prepared.pixels
    assert pixels.dtype.name == "uint8" and pixels.ndim == 3 and pixels.shape[2] == 3, case.kind
    assert pixels.flags["C_CONTIGUOUS"], case.kind
    assert LIMITS.min_side <= min(pixels.shape[:2]) and max(pixels.shape[:2]) <= LIMITS.max_side, case.kind
    return "ok"


def check(cases: list[Case]) -> Counter[str]:
    return check_outcomes(cases, outcome)


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


def copied(case: Case) -> str:
    try:
        copy = still(case.data)
    except ImageRejected as refusal:
        return refused(case, refusal)
    assert max(copy.width, copy.height) <= LONG_SIDE, case.kind
    decoded = prepare_image(copy.data, LIMITS)
    assert (decoded.width, decoded.height) == (copy.width, copy.height), case.kind
    return "ok"


def test_every_kind_of_hostile_file_becomes_a_bounded_copy_or_a_kind_refusal() -> None:
    seen = check_outcomes(hostile_images(len(GENERATORS) * 6), copied)
    assert seen["valid ok"] and seen["truncated rejected"] and seen["huge rejected"] and seen["40 ok"], seen
