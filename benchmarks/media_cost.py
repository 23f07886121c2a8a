"""What a PDF or a clip costs (issue 15): images, prompt tokens, intake time and time to first text, on the
full-size synthetic Phi-3.5-vision INT4 at the default NUM_CROPS.

Cases, each in a chat of its own, each followed by a text follow-up: a 4-page A4 PDF (PDF_PAGES' default),
a 30-second 720p video at the 4 frames the bot takes at the default HISTORY_TOKENS, and the same video at
VIDEO_FRAMES' default of 8 (what a larger HISTORY_TOKENS allows).  Intake is the bot's own code: a child
process renders the pages or decodes the frames (bot/media/reader.py), its start-up included; the engine
runs as the bot runs it, after one photo answer as its warm-up.  Answers are 32 tokens.  Takes about 6
minutes on 2 cores; run it on a quiet machine.

Usage: python benchmarks/media_cost.py [--model DIR]
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    bot_like_engine,
    model_from_arguments,
    png,
    synthetic_photo,
    timed_answer,
    write_results,
)

if TYPE_CHECKING:
    from bot.media.frames import Frames
    from bot.media.pages import Pages

TOKENS = 32
NUM_CROPS = 4


def a4_pdf(pages: int) -> bytes:
    """Pages of printed lines, A4 at 150 dpi, as a scanner or a word processor makes them."""
    from PIL import Image, ImageDraw

    images = []
    for number in range(1, pages + 1):
        image = Image.new("RGB", (1240, 1754), "white")
        draw = ImageDraw.Draw(image)
        for line in range(60):
            draw.text(
                (100, 100 + line * 26),
                f"Page {number}, line {line + 1}: the notice period is thirty days.",
                fill="black",
            )
        images.append(image)
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=150)
    return out.getvalue()


def video(seconds: int, fps: int = 30, size: tuple[int, int] = (1280, 720)) -> bytes:
    """A moving pattern encoded with H.264, as phones send clips."""
    import av
    import numpy as np

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as muxer:
        stream = muxer.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"preset": "ultrafast"}  # making the clip is not what is measured
        y, x = np.mgrid[0 : size[1], 0 : size[0]]
        for index in range(seconds * fps):
            pixels = np.stack([(x + index * 4) % 256, (y + index * 2) % 256, (x + y) % 256], axis=-1).astype(np.uint8)
            muxer.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        muxer.mux(stream.encode())
    return out.getvalue()


async def _run(model: Path) -> list[dict[str, Any]]:
    from bot.media.decoding import prepare_image
    from bot.media.reader import MediaReader
    from engine.conversation import Turn
    from engine.images import grid_side, image_tokens

    engine = await bot_like_engine(model, num_crops=NUM_CROPS, answer_tokens=TOKENS)
    per_image = image_tokens(1, 1, NUM_CROPS)
    rows: list[dict[str, Any]] = []
    try:
        warm_up = Turn("user", "What is in this photo?", (prepare_image(png(synthetic_photo(5))),))
        await timed_answer(engine, "warm-up", [], warm_up)
        document, clip = a4_pdf(6), video(30)
        side = grid_side(NUM_CROPS)
        reader = MediaReader()
        cases: list[tuple[str, bytes, Callable[[], Awaitable[Pages | Frames]]]] = [
            ("4-page PDF", document, lambda: reader.pages(document, "", limit=4, num_crops=NUM_CROPS)),
            ("30 s video, 4 frames", clip, lambda: reader.frames(clip, limit=4, max_seconds=600, long_side=side)),
            ("30 s video, 8 frames", clip, lambda: reader.frames(clip, limit=8, max_seconds=600, long_side=side)),
        ]
        for name, data, intake in cases:
            started = time.monotonic()
            images = (await intake()).images
            prepared = tuple(prepare_image(image) for image in images)
            intake_seconds = time.monotonic() - started
            question = Turn("user", "What is this about?", prepared)
            answer = await timed_answer(engine, name, [], question)
            past = [question, Turn("assistant", answer.finished.text)]
            follow = await timed_answer(engine, name, past, Turn("user", "And what else?"))
            row = {
                "case": name,
                "file_bytes": len(data),
                "images": len(images),
                "image_tokens": per_image * len(images),
                "question_tokens": answer.finished.report.question_tokens,
                "intake_seconds": round(intake_seconds, 2),
                "first_text_seconds": round(answer.first_text or float("nan"), 2),
                "follow_up_first_text_seconds": round(follow.first_text or float("nan"), 2),
            }
            rows.append(row)
            print(
                f"{name:<22}{row['images']:>7}{row['question_tokens']:>9}{row['intake_seconds']:>9.2f}"
                f"{row['first_text_seconds']:>10.1f}{row['follow_up_first_text_seconds']:>10.2f}",
                flush=True,
            )
    finally:
        await engine.aclose()
    return rows


def main() -> None:
    model = model_from_arguments(__doc__.splitlines()[0])
    print(f"{'case':<22}{'images':>7}{'tokens':>9}{'intake':>9}{'first':>10}{'follow-up':>10}", flush=True)
    rows = asyncio.run(_run(model))
    path = write_results("media_cost", {"answer_tokens": TOKENS, "num_crops": NUM_CROPS, "cases": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
