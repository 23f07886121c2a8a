"""How true the time estimates the user sees are (issue 14): the estimate shown at the start against the real
time to the first text, on the full-size synthetic Phi-3.5-vision INT4.

The engine runs as the bot runs it (its CPU options, batch size and system prompt) and learns its speed only
from the answers it gives here (engine/estimates.py): the first photo answer of each engine is its warm-up
and the second the first measurement, so neither has an estimate.  Cases, each in a chat of its own unless
said:

* a new photo with a question, three times, and an album of two;
* a text follow-up about that photo;
* a photo question sent while another chat's photo question runs: the place in line's estimate, shown when
  it is taken, against the time to its first text (the wait included);
* deeper lines behind a photo question: three photo questions from three chats (answered together as one
  batch once it ends), twice, as the first batch is the engine's first measurement of a batch; and five text
  questions (a batch of BATCH_SIZE, then the fifth);
* a second engine with NUM_CROPS=1 (313 image tokens instead of 757): three photos, each with a follow-up.

Answers are ``TOKENS`` long (``ignore_eos``), as a random-weight model otherwise stops anywhere; the
running average of answer lengths then says what a real model's would.  The goal: every estimate within
30 % of the real time.  Takes about 9 minutes on 2 cores; run it on a quiet machine.

Usage: python benchmarks/progress_estimates.py [--model DIR]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bot_like_engine, model_from_arguments, png, synthetic_photo, write_results
from bot import texts

TOKENS = 32
GOAL = 0.30
OTHER_DELAY = 2.0  # seconds after the first chat's question that the second chat asks
LINE_GAP = 0.5  # seconds between the questions of chats lining up behind it


@dataclass
class Case:
    name: str
    estimate: float | None  # seconds, as shown when the status appeared
    real: float  # seconds from that moment to the first text

    @property
    def ratio(self) -> float | None:
        return None if self.estimate is None else self.estimate / self.real

    @property
    def shown(self) -> bool:
        """Whether the status says this estimate as a number (bot/texts.py shows none for a short wait)."""
        return texts.said(self.estimate)

    def line(self) -> str:
        estimate = "-" if self.estimate is None else f"{self.estimate:.1f}"
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}"
        return f"{self.name:<46}{estimate:>10}{self.real:>8.1f}{ratio:>8}{'' if self.shown else '  (not shown)':<14}"

    def row(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "case": self.name,
            "estimate_seconds": None if self.estimate is None else round(self.estimate, 2),
            "real_seconds": round(self.real, 2),
            "ratio": None if ratio is None else round(ratio, 3),
            "shown": self.shown,
        }


async def _observed(
    engine: Any, key: str, past: list[Any], question: Any, name: str | None = None
) -> tuple[Case, Case | None, Any]:
    """The answer's start (Started's estimate) and, if it waited, its place in line: the last estimate shown
    while it waited (a new one is shown when the line changes: a batch forming behind changes the wait), timed
    from when it was shown."""
    from engine.engine import Chunk, Finished, Started, Waiting

    waited: tuple[float, float | None] | None = None
    started: tuple[float, float | None] | None = None
    first: float | None = None
    finished: Any = None
    async for event in engine.ask(key, past, question):
        now = time.monotonic()
        if isinstance(event, Waiting):
            waited = (now, event.seconds)
        elif isinstance(event, Started):
            started = (now, event.seconds)
        elif isinstance(event, Chunk) and first is None:
            first = now
        elif isinstance(event, Finished):
            finished = event
    assert started is not None and first is not None and finished.status == "complete", finished
    name = name or key
    start = Case(name, started[1], first - started[0])
    line = None if waited is None else Case(f"{name} (in line)", waited[1], first - waited[0])
    return start, line, finished


def _photo(seed: int) -> Any:
    from bot.media.decoding import prepare_image

    return prepare_image(png(synthetic_photo(seed)))


async def _run(model: Path, num_crops: int, full: bool) -> list[Case]:
    from engine.conversation import Turn

    engine = await bot_like_engine(model, num_crops=num_crops, answer_tokens=TOKENS)
    crops = f"crops{num_crops}"
    cases: list[Case] = []

    def add(*new: Case) -> None:
        cases.extend(new)
        for case in new:
            print(case.line(), flush=True)

    seeds = iter(range(3, 100))
    try:

        async def photos(name: str, count: int) -> None:
            """A new photo (or album) in a chat of its own, then a text follow-up about it."""
            question = Turn("user", "What is in this photo?", tuple(_photo(next(seeds)) for _ in range(count)))
            key = f"{crops} {name}"
            start, _, finished = await _observed(engine, key, [], question)
            follow = Turn("user", "And what colours does it have?")
            past = [question, Turn("assistant", finished.text)]
            add(start, (await _observed(engine, key, past, follow, f"{key} follow-up"))[0])

        async def line_up(name: str, questions: list[Turn]) -> None:
            """A photo question running, then ``questions`` asked from chats of their own, LINE_GAP apart:
            each one's place in line and start (batched together, BATCH_SIZE at a time)."""
            ahead_question = Turn("user", "Describe it.", (_photo(next(seeds)),))
            ahead = asyncio.create_task(_observed(engine, f"{crops} {name}: ahead", [], ahead_question))
            behind = []
            for number, question in enumerate(questions, 1):
                await asyncio.sleep(OTHER_DELAY if number == 1 else LINE_GAP)
                key = f"{crops} {name}: #{number}"
                behind.append(asyncio.create_task(_observed(engine, key, [], question)))
            add((await ahead)[0])
            for start, line, _ in await asyncio.gather(*behind):
                add(*([line] if line else []), start)

        await photos("first photo", 1)  # the model's warm-up: no estimate yet
        await photos("photo 2", 1)  # the first measurement: no estimate yet
        await photos("photo 3", 1)
        if full:
            await photos("album of 2", 2)
            for number in (1, 2):
                ahead_question = Turn("user", "Describe it.", (_photo(50 + number),))
                first = asyncio.create_task(_observed(engine, f"{crops} ahead {number}", [], ahead_question))
                await asyncio.sleep(OTHER_DELAY)
                question = Turn("user", "What is in this photo?", (_photo(60 + number),))
                start, line, _ = await _observed(engine, f"{crops} behind {number}", [], question)
                ahead = await first
                add(ahead[0], *([line] if line else []), start)  # a tiny model may be done before
            for batch in (1, 2):  # the first batch teaches the engine how fast a batch reads
                photos_behind = [
                    Turn("user", "What is in this photo?", (_photo(70 + 3 * batch + n),)) for n in range(3)
                ]
                await line_up(f"3 photos behind a photo, batch {batch}", photos_behind)
            text = Turn("user", "Tell me a short story about a lighthouse keeper.")
            await line_up("5 texts behind a photo", [text] * 5)
    finally:
        await engine.aclose()
    return cases


def _accuracy(cases: list[Case]) -> dict[str, Any]:
    errors = [abs(case.ratio - 1) for case in cases if case.ratio is not None]
    return {
        "estimated": len(errors),
        "within_goal": sum(error <= GOAL for error in errors),
        "median_error": round(statistics.median(errors), 3) if errors else None,
        "worst_error": round(max(errors), 3) if errors else None,
    }


def main() -> None:
    model = model_from_arguments(__doc__.splitlines()[0])
    print(f"{'case':<46}{'estimate':>10}{'real':>8}{'ratio':>8}", flush=True)
    cases = asyncio.run(_run(model, 4, full=True)) + asyncio.run(_run(model, 1, full=False))
    summary = {"all": _accuracy(cases), "shown": _accuracy([case for case in cases if case.shown])}
    for label, figures in (("all", summary["all"]), ("shown as a number", summary["shown"])):
        if not figures["estimated"]:
            print(f"{label}: no estimates")
            continue
        print(
            f"{label}: {figures['within_goal']} of {figures['estimated']} estimates within {GOAL:.0%} of the real "
            f"time; median error {figures['median_error']:.0%}, worst {figures['worst_error']:.0%}"
        )
    path = write_results(
        "progress_estimates",
        {"answer_tokens": TOKENS, "goal": GOAL, "summary": summary, "cases": [case.row() for case in cases]},
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
