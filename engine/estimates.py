"""How long an answer will take, from the speed the engine measured on this machine.

Why measured: the time to answer a new photo grows several times over from NUM_CROPS=4 to 16
(benchmarks/crops_cost.py), and the CPU's vector instructions and its other load change it as much; a
constant would be wrong everywhere but where it was measured.  Nothing numeric is known before the first
answer of a model on a machine (engine/speed_book.py keeps the figures across restarts); from then on every
answer that ran alone (a batched answer's timings mix several conversations') refines the figures:

* encoding photos: seconds per image token (the crops an image is cut into decide both), a running average;
* reading the prompt: a straight line through the recent answers' (question tokens, seconds to first text
  beside encoding) points, because a short follow-up pays a fixed cost (the call, the first decoded word)
  that a per-token rate would miss; with too little spread in the points yet, a rate through zero, and
  nothing for a question far smaller or larger than those measured (a first text follow-up after photos);
* writing: tokens per second and answer length in tokens, running averages, the length bounded by
  ``max_new_tokens`` (and taken as that until one answer has been measured);
* batches: a batched answer's time to its first text against the sum of its batch's first texts alone, a
  running average (several photo questions batched start together, after most of that sum; a wait behind a
  batch is unknown until one has been measured).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SMOOTHING = 0.3  # weight of the newest sample in a running average: a few answers adapt it to a new load
READING_POINTS = 12  # recent answers the prompt-reading line is fitted through
SPREAD_TOKENS = 50.0  # question sizes must differ this much (standard deviation) to tell fixed cost from rate
REACH = 4.0  # the line is trusted for questions up to this many times smaller or larger than those measured


@dataclass(frozen=True)
class Estimate:
    """Seconds from an answer's start to its first text, and to its end."""

    first_text: float
    whole: float
    work: float = 0.0  # of first_text, what batched questions add up (photos, tokens); the rest a batch pays once


@dataclass(frozen=True)
class Sample:
    """What one answer that ran alone took, as the engine measured it."""

    question_tokens: int  # counted by the model's tokenizer, images included
    image_tokens: int  # of images the question brought (encoded during this answer)
    first_text_seconds: float  # from the start to the first text
    vision_seconds: float  # encoding the images
    waited_seconds: float  # in the model's process behind work read ahead: not part of this answer's cost
    generated_tokens: int
    tokens_per_second: float | None  # writing, after the first token
    complete: bool  # an answer cut short by a stop says nothing about how long answers are


def _positive(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"not a measured figure: {value!r}")
    return number


def _averaged(known: float | None, sample: float) -> float:
    return sample if known is None else (1 - SMOOTHING) * known + SMOOTHING * sample


class Speed:
    """The engine's measured speed on this machine; the one place these figures are kept."""

    def __init__(self) -> None:
        self.vision_seconds_per_image_token: float | None = None
        self.decode_tokens_per_second: float | None = None
        self.answer_tokens: float | None = None
        self.batch_share: float | None = None  # a batch's first texts, against reading its prompts one by one
        # a process's first photo (OpenVINO prepares its kernels for the shapes it meets first) against the next
        self.warm_up_factor: float | None = None
        self._reading: deque[tuple[float, float]] = deque(maxlen=READING_POINTS)  # (question tokens, seconds)

    def saved(self) -> dict[str, Any]:
        """The figures as plain values (engine/speed_book.py keeps them across restarts)."""
        return {
            "vision_seconds_per_image_token": self.vision_seconds_per_image_token,
            "decode_tokens_per_second": self.decode_tokens_per_second,
            "answer_tokens": self.answer_tokens,
            "batch_share": self.batch_share,
            "warm_up_factor": self.warm_up_factor,
            "reading": [list(point) for point in self._reading],
        }

    @classmethod
    def restored(cls, saved: Mapping[str, Any]) -> Speed:
        """The figures ``saved`` gave; raises TypeError, ValueError or KeyError for values that are not."""
        speed = cls()
        names = ("vision_seconds_per_image_token", "decode_tokens_per_second", "answer_tokens", "batch_share")
        for name in (*names, "warm_up_factor"):
            value = saved[name]
            setattr(speed, name, None if value is None else _positive(value))
        speed._reading.extend((_positive(x), _positive(y)) for x, y in saved["reading"])
        return speed

    def record_batch(self, first_text_seconds: float, batch: list[Estimate]) -> None:
        """A batched answer's time to its first text, against its batch's estimates alone."""
        work = sum(estimate.work for estimate in batch)
        fixed = max((estimate.first_text - estimate.work for estimate in batch), default=0.0)
        if work > 0 and first_text_seconds > fixed:
            self.batch_share = _averaged(self.batch_share, (first_text_seconds - fixed) / work)

    def record(self, sample: Sample) -> None:
        if sample.image_tokens > 0 and sample.vision_seconds > 0:
            self.vision_seconds_per_image_token = _averaged(
                self.vision_seconds_per_image_token, sample.vision_seconds / sample.image_tokens
            )
        reading = sample.first_text_seconds - sample.vision_seconds - sample.waited_seconds
        if sample.question_tokens > 0 and reading > 0:
            self._reading.append((float(sample.question_tokens), reading))
        if sample.tokens_per_second:
            self.decode_tokens_per_second = _averaged(self.decode_tokens_per_second, sample.tokens_per_second)
        if sample.complete and sample.generated_tokens > 0:
            self.answer_tokens = _averaged(self.answer_tokens, float(sample.generated_tokens))

    def reading_seconds(self, question_tokens: int) -> tuple[float, float] | None:
        """Seconds from the start to the first text, photos' encoding aside, as a fixed part and a part that
        grows with the question; None before an answer of about that size."""
        sizes = [x for x, _ in self._reading]
        if not sizes or not min(sizes) / REACH <= question_tokens <= max(sizes) * REACH:
            return None
        count = len(self._reading)
        mean_x = sum(x for x, _ in self._reading) / count
        mean_y = sum(y for _, y in self._reading) / count
        variance = sum((x - mean_x) ** 2 for x, _ in self._reading) / count
        if variance >= SPREAD_TOKENS**2:
            slope = sum((x - mean_x) * (y - mean_y) for x, y in self._reading) / count / variance
            fixed = mean_y - slope * mean_x
            if slope > 0 and fixed >= 0:
                return fixed, slope * question_tokens
        return 0.0, mean_y / mean_x * question_tokens

    def estimate(self, question_tokens: int, image_tokens: int, max_new_tokens: int) -> Estimate | None:
        """For a question of ``question_tokens`` (images included) bringing ``image_tokens`` of new images;
        None while a figure it needs has not been measured."""
        reading = self.reading_seconds(question_tokens)
        if reading is None or self.decode_tokens_per_second is None:
            return None
        if image_tokens and self.vision_seconds_per_image_token is None:
            return None
        fixed, growing = reading
        work = growing + image_tokens * (self.vision_seconds_per_image_token or 0.0)
        length = self.answer_tokens or max_new_tokens  # as long as allowed, until an answer's length is known
        writing = max(min(length, max_new_tokens) - 1, 0) / self.decode_tokens_per_second
        return Estimate(fixed + work, fixed + work + writing, work)


def together(batch: list[Estimate], share: float | None) -> float | None:
    """Seconds to the first texts of questions answered as one batch: GenAI encodes each one's photos as it is
    admitted and reads their prompts in shared steps, so the first texts come at about the same time, once
    the batch's work is done (``share`` of the questions' work one after another, measured as
    ``Speed.batch_share``) and the fixed cost of a step paid once; None for a batch of several before a
    batch has been measured."""
    if len(batch) == 1:
        return batch[0].first_text
    if share is None:
        return None
    return max(estimate.first_text - estimate.work for estimate in batch) + share * sum(e.work for e in batch)


def first_text_in_line(
    running: list[float], waiting: list[Estimate], place: int, batch_max: int, share: float | None
) -> float | None:
    """Seconds until the request at ``waiting[place]`` shows its first text: what is left of the answers
    running now (they end together when batched), then the waves of ``batch_max`` before its own (each as
    long as reading its prompts together and writing its longest answer), then its own wave's reading: once
    the line moves, up to ``batch_max`` waiting requests are answered together, those behind it included.
    None where a batch's speed is not known yet."""
    waves = [waiting[index : index + batch_max] for index in range(0, len(waiting), batch_max)]
    total = max(running, default=0.0)
    for wave in waves[: place // batch_max]:
        reading = together(wave, share)
        if reading is None:
            return None
        total += reading + max(estimate.whole - estimate.first_text for estimate in wave)
    mine = together(waves[place // batch_max], share)
    return None if mine is None else total + mine
