"""PDF pages and clip frames as the model gets them, and the hostile PDFs and clips people send."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot import texts
from bot.media import frames, pages
from bot.media.decoding import ImageRejected, prepare_image
from bot.media.material import Material, unseen_pages
from bot.media.reader import MediaError, MediaReader
from bot.media.refusal import Refusal
from bot.media.stills import LONG_SIDE, still
from devkit.hostile_images import png_40_megapixels_rgba
from devkit.media_files import (
    COLOURS,
    MediaCase,
    clip,
    encrypted_pdf,
    gif,
    header_lies_matroska,
    hostile_media,
    huge_canvas_gif,
    pdf,
    pdf_drawing_one_image,
)
from engine.conversation import Turn
from model_store import child_start
from tests.support.outcomes import check_outcomes
from tests.support.saying import said


def colour(png: bytes) -> tuple[int, ...]:
    with Image.open(io.BytesIO(png)) as image:
        return tuple(image.convert("RGB").getpixel((image.width // 2, image.height // 2)))


def near(found: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """The same colour, give or take what JPEG inside the PDF or the clip changes."""
    return all(abs(a - b) <= 8 for a, b in zip(found, expected, strict=True))


@pytest.mark.parametrize(
    ("question", "pages_named"),
    [
        ("What does page 3 say?", [3]),
        ("summarise pages 2-4", [2, 3, 4]),
        ("compare p. 5 and 7", [5, 7]),
        ("pp. 1–2, 9 please", [1, 2, 9]),
        ("Page 2, page 4", [2, 4]),
        ("what is on the last page?", [12]),
        ("pages 10 to 200", [10, 11, 12]),
        ("What is this document about?", []),
        ("There are 3 pages of it", []),
    ],
)
def test_the_pages_a_question_names(question: str, pages_named: list[int]) -> None:
    assert pages.named_pages(question, 12) == pages_named


def test_a_named_page_is_rendered_and_others_are_not() -> None:
    found = pages.render(pdf(6), "What colour is page 5?", limit=4, num_crops=4)
    assert found.numbers == (5,) and found.count == 6
    [page] = found.images
    assert near(colour(page), COLOURS[4])


def test_without_named_pages_the_first_ones_up_to_the_limit() -> None:
    found = pages.render(pdf(6), "What is this?", limit=4, num_crops=4)
    assert found.numbers == (1, 2, 3, 4)
    assert all(near(colour(image), expected) for image, expected in zip(found.images, COLOURS, strict=False))


@pytest.mark.parametrize(("num_crops", "side"), [(1, 336), (4, 672), (9, 1008), (16, 1344)])
def test_pages_are_rendered_at_the_width_of_the_models_crop_grid(num_crops: int, side: int) -> None:
    found = pages.render(pdf(1, size=(595, 842)), "", limit=1, num_crops=num_crops)
    with Image.open(io.BytesIO(found.images[0])) as image:
        assert image.height == side and abs(image.width - side * 595 / 842) <= 1


def test_a_page_the_document_lacks_is_refused_by_name() -> None:
    with pytest.raises(pages.DocumentError) as caught:
        pages.render(pdf(3), "what does page 9 say?", limit=4, num_crops=4)
    assert said(caught.value) == "This PDF has 3 pages, so I can't look at page 9."


def test_an_encrypted_pdf_is_refused_with_the_reason() -> None:
    with pytest.raises(pages.DocumentError) as caught:
        pages.render(encrypted_pdf(), "", limit=4, num_crops=4)
    assert "protected by a password" in said(caught.value)


@pytest.mark.parametrize(
    ("numbers", "written"),
    [((1, 2, 3, 4), "1-4"), ((3,), "3"), ((1, 2), "1 and 2"), ((2, 5, 7), "2, 5 and 7"), ((1, 2, 5), "1, 2 and 5")],
)
def test_pages_are_listed_as_people_write_them(numbers: tuple[int, ...], written: str) -> None:
    assert pages.page_list(numbers) == written


def grey(jpeg: bytes) -> int:
    return colour(jpeg)[0]


@pytest.mark.parametrize(("codec", "container"), [("libx264", "mp4"), ("mpeg4", "mp4"), ("libvpx-vp9", "webm")])
def test_frames_are_taken_from_the_middle_of_equal_parts_of_the_clip(codec: str, container: str) -> None:
    found = frames.sample(clip(80, 8, codec=codec, container=container), limit=8, max_seconds=600, long_side=672)
    assert found.duration == pytest.approx(10, abs=0.2)
    assert found.seconds == pytest.approx([0.625 + 1.25 * index for index in range(8)], abs=0.13)
    for second, image in zip(found.seconds, found.images, strict=True):
        assert grey(image) == pytest.approx(round(second * 8) * 10 % 250, abs=8), f"the frame shown at {second} s"


def test_a_short_clip_gets_fewer_frames_and_a_still_one_a_single_frame() -> None:
    assert len(frames.sample(clip(4, 8), limit=8, max_seconds=600, long_side=672).images) == 1  # 0.5 s
    assert len(frames.sample(gif(6, 100), limit=8, max_seconds=600, long_side=672).images) == 2  # 0.6 s
    assert len(frames.sample(gif(1), limit=8, max_seconds=600, long_side=672).images) == 1


def test_a_gif_is_read_frame_by_frame() -> None:
    found = frames.sample(gif(30, 200), limit=3, max_seconds=600, long_side=672)  # 6 s, 3 frames: 1 s, 3 s, 5 s
    assert all(near(colour(image), COLOURS[n]) for image, n in zip(found.images, (5, 3, 1), strict=True))


def test_frames_are_made_no_larger_than_the_model_reads_them() -> None:
    found = frames.sample(clip(8, 8, size=(1280, 720)), limit=2, max_seconds=600, long_side=672)
    with Image.open(io.BytesIO(found.images[0])) as image:
        assert image.size == (672, 378)


def test_a_1080p_clip_with_key_frames_250_frames_apart_is_sampled_in_full() -> None:
    """x264's default key frame interval: each of the 8 frames needs up to 250 frames decoded from its key frame,
    within the decoding budget, so none is cut."""
    found = frames.sample(clip(300, 30, (1920, 1080), "mpeg4", gop=250), limit=8, max_seconds=600, long_side=672)
    assert len(found.images) == 8
    for second, image in zip(found.seconds, found.images, strict=True):
        assert grey(image) == pytest.approx(round(second * 30) * 10 % 250, abs=8), f"the frame shown at {second} s"


def _in_child_with_peak(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, int]:
    """In a reader's child: what ``function`` did ("ok" or its refusal) and the child's peak memory, in MB."""
    try:
        function(*args, **kwargs)
        outcome = "ok"
    except (frames.VideoError, ImageRejected) as refusal:
        outcome = said(refusal)
    status = Path("/proc/self/status").read_text()  # not ru_maxrss, which counts the parent's before the exec
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return outcome, peak_kb // 1024


@pytest.fixture
def _tests_importable_in_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader's child imports its function's module under its confinement: ``_in_child_with_peak``'s too, and
    the files from devkit/ that module imports."""
    monkeypatch.setattr(child_start, "PROJECT_PACKAGES", (*child_start.PROJECT_PACKAGES, "tests", "devkit"))


@pytest.mark.usefixtures("_tests_importable_in_readers")
async def test_frames_larger_than_the_header_says_are_refused_before_they_take_memory() -> None:
    """The Matroska file announcing 64×64 and carrying 16000×16000 JPEG frames took gigabytes to read."""
    outcome, peak_mb = await MediaReader().run(
        _in_child_with_peak, frames.sample, header_lies_matroska(), limit=8, max_seconds=600, long_side=672
    )
    assert outcome == texts.CLIP_UNREADABLE and peak_mb < 300, (outcome, peak_mb)


@pytest.mark.usefixtures("_tests_importable_in_readers")
async def test_a_gif_whose_frames_are_each_a_huge_canvas_is_cut_at_the_decoding_budget() -> None:
    """2000 frames of 36 megapixels: the budget of pixels stops decoding after about a hundred of them, and what
    was found is kept (benchmarks/hostile_files.py measures what it costs)."""
    started = time.monotonic()
    found = frames.sample(huge_canvas_gif(), limit=8, max_seconds=600, long_side=672)
    assert 1 <= len(found.images) < 8, "cut short, not refused"
    assert time.monotonic() - started < 8
    outcome, peak_mb = await MediaReader().run(
        _in_child_with_peak, frames.sample, huge_canvas_gif(), limit=8, max_seconds=600, long_side=672
    )
    assert outcome == "ok" and peak_mb < 700, (outcome, peak_mb)


async def test_a_reader_that_needs_more_memory_than_it_may_take_refuses_the_file() -> None:
    small = MediaReader(memory_mb=256)
    with pytest.raises(MediaError) as caught:
        await small.run(bytearray, 1024**3)
    assert caught.value.reason == "too_large" and "more memory to read than I may use" in said(caught.value)
    with pytest.raises(MediaError) as caught:
        await small.still(png_40_megapixels_rgba())  # about 0.9 GB to decode
    assert said(caught.value) == texts.TOO_LARGE_TO_OPEN
    copy = await MediaReader().still(png_40_megapixels_rgba())
    assert (copy.width, copy.height, copy.mime_type) == (LONG_SIDE, 840, "image/png")


async def test_the_reader_is_the_first_process_the_kernel_ends_when_memory_runs_out() -> None:
    assert await MediaReader().run(Path("/proc/self/oom_score_adj").read_text) == "1000\n"


@pytest.mark.parametrize(
    ("size", "fmt", "mime_type", "stored"),
    [
        ((4000, 3000), "JPEG", "image/jpeg", (1344, 1008)),
        ((1170, 2532), "PNG", "image/png", (621, 1344)),
        ((640, 480), "WEBP", "image/png", (640, 480)),
    ],
)
def test_a_photo_is_kept_as_a_copy_no_larger_than_the_largest_crop_grid(
    size: tuple[int, int], fmt: str, mime_type: str, stored: tuple[int, int]
) -> None:
    image = Image.new("RGB", size, COLOURS[2])
    image.paste(COLOURS[0], (0, 0, size[0] // 2, size[1] // 2))
    out = io.BytesIO()
    image.save(out, fmt)
    copy = still(out.getvalue())
    assert (copy.mime_type, (copy.width, copy.height)) == (mime_type, stored)
    decoded = prepare_image(copy.data)
    assert (decoded.width, decoded.height) == stored, "decoded as it was stored: the model sees the copy as it is"
    height, width = stored[1], stored[0]
    for row, column, expected in ((height // 4, width // 4, COLOURS[0]), (3 * height // 4, 3 * width // 4, COLOURS[2])):
        assert near(tuple(map(int, decoded.pixels[row, column])), expected), (row, column)


async def test_a_file_read_once_is_remembered_with_its_refusal_and_within_bounds() -> None:
    reader, reads = MediaReader(remembered_bytes=10_000), []

    def reading(value: object) -> Callable[[], Any]:
        async def read() -> object:
            reads.append(value)
            if isinstance(value, MediaError):
                raise value
            return value

        return read

    clip_frames = frames.Frames((0.5,), 1.0, (b"x" * 4000,))
    assert await reader.remembered("clip", reading(clip_frames), "8 frames") is clip_frames
    assert await reader.remembered("clip", reading("again"), "8 frames") is clip_frames
    assert await reader.remembered("clip", reading("other"), "4 frames") == "other", "another variant is read"
    for refusal in (MediaError("too_slow", seconds=30), MediaError("truncated")):
        for read, variant in ((reading(refusal), None), (reading("not read"), "any variant")):
            with pytest.raises(MediaError) as caught:
                await reader.remembered(refusal.reason, read, variant)
            assert (caught.value.reason, caught.value.data) == (refusal.reason, refusal.data)
    for passing in (MediaError("no_such_page", count=3, page=9), MediaError("stopping")):
        with pytest.raises(MediaError):
            await reader.remembered("pdf", reading(passing))
    assert await reader.remembered("pdf", reading("read"), "page 2") == "read", "not a refusal of the file"
    assert reads == [clip_frames, "other", *[r for r in reads if isinstance(r, MediaError)], "read"]
    big = frames.Frames((0.5,), 1.0, (b"x" * 8000,))
    await reader.remembered("big", reading(big))
    assert await reader.remembered("clip", reading("evicted"), "8 frames") == "evicted", "bounded in bytes"


def test_a_clip_over_the_length_limit_is_refused_by_its_length() -> None:
    with pytest.raises(frames.VideoError) as caught:
        frames.sample(clip(80, 8), limit=8, max_seconds=5, long_side=672)
    assert said(caught.value) == "That clip is 0:10 long; I can look at clips of up to 0:05."


def outcome(case: MediaCase) -> str:
    try:
        if case.media == "pdf":
            images = pages.render(case.data, "", limit=4, num_crops=4).images
        else:
            images = frames.sample(case.data, limit=8, max_seconds=600, long_side=672).images
    except (pages.DocumentError, frames.VideoError) as refusal:
        message = said(refusal)
        assert message.endswith(".") and len(message) < 200, message
        assert "PDFium" not in message and "Errno" not in message and "avcodec" not in message, message
        return "rejected"
    assert 1 <= len(images) <= 8, case.kind
    for image in images:
        with Image.open(io.BytesIO(image)) as opened:
            assert max(opened.size) <= 672, case.kind
    return "ok"


def test_hostile_pdfs_and_clips_get_images_or_a_kind_refusal_quickly() -> None:
    seen = check_outcomes(hostile_media(80), outcome)
    assert seen["pdf ok"] and seen["pdf rejected"] and seen["clip ok"] and seen["clip rejected"], seen


@pytest.mark.slow
def test_a_thousand_and_more_hostile_pdfs_and_clips() -> None:
    seen = check_outcomes(hostile_media(1200, seed=7), outcome)
    assert sum(seen.values()) > 1000 and seen["pdf ok"] and seen["clip rejected"], seen


async def test_a_pdf_that_renders_for_minutes_is_stopped_at_the_deadline() -> None:
    reader = MediaReader(seconds=3)
    started = time.monotonic()
    with pytest.raises(MediaError) as caught:
        await reader.pages(pdf_drawing_one_image(2000), "", limit=1, num_crops=4)
    assert said(caught.value).startswith("That file takes too long to read (over 3 s)")
    assert time.monotonic() - started < 8, "the child was killed at the deadline, not waited for"


async def test_the_reader_gives_the_pages_and_frames_and_passes_refusals_on() -> None:
    reader = MediaReader()
    found = await reader.pages(pdf(3), "page 2", limit=4, num_crops=1)
    assert found.numbers == (2,) and near(colour(found.images[0]), COLOURS[1])
    assert len((await reader.frames(gif(), limit=8, max_seconds=600, long_side=336)).images) == 2
    with pytest.raises(MediaError) as caught:
        await reader.pages(encrypted_pdf(), "", limit=4, num_crops=4)
    assert "protected by a password" in said(caught.value)


async def test_a_reader_that_dies_on_a_file_is_a_refusal() -> None:
    with pytest.raises(MediaError) as caught:
        await MediaReader().run(os.abort)
    assert caught.value.reason == "crashed" and "the reader stopped on it" in said(caught.value)


async def _running_read() -> tuple[MediaReader, asyncio.Task[pages.Pages]]:
    """A reader busy with a page that renders for minutes."""
    reader = MediaReader(seconds=60)
    task = asyncio.create_task(reader.pages(pdf_drawing_one_image(2000), "", limit=1, num_crops=4))
    await asyncio.sleep(1.5)
    return reader, task


async def test_cancelling_a_read_stops_its_child_at_once() -> None:
    _, task = await _running_read()
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 3
    assert not [child for child in multiprocessing.active_children() if child.name == "phi3bot-read"]


async def test_stopping_the_reader_ends_a_running_read_and_refuses_new_ones() -> None:
    reader, task = await _running_read()
    started = time.monotonic()
    reader.stop()
    with pytest.raises(MediaError) as caught:
        await task
    assert time.monotonic() - started < 2 and "restarting" in said(caught.value)
    with pytest.raises(MediaError) as caught:
        await reader.pages(pdf(1), "", limit=1, num_crops=1)
    assert "restarting" in said(caught.value)


def test_a_hundred_ranges_over_a_million_pages_name_a_bounded_number_of_pages() -> None:
    question = "pages " + ", ".join(["1-1048574"] * 100)
    started = time.monotonic()
    assert len(pages.named_pages(question, 1_048_574)) == pages.NAMED_MAX
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    ("seconds", "tenths", "written"),
    [(7, False, "0:07"), (90, False, "1:30"), (3723, False, "1:02:03"), (2.5, True, "2.5 s"), (12, True, "0:12")],
)
def test_clock(seconds: float, tenths: bool, written: str) -> None:
    assert texts.clock(seconds, tenths=tenths) == written


@pytest.mark.parametrize(
    "material",
    [
        Material(which="pages 1-4", whole="a 12-page PDF", kind="pdf"),
        Material(which="page 3", whole="a 5-page PDF", kind="pdf"),
        Material(which="4 frames", whole="a 0:10 video, at 0:01, 0:04, 0:06, 0:09", kind="clip"),
        Material(which="one frame", whole="a 0.4 s GIF, at 0.2 s", kind="clip"),
    ],
)
def test_what_the_images_were_is_read_back_from_the_stored_question(material: Material) -> None:
    stored = material.told("What is this?")
    assert Material.recalled(stored) == material
    assert Material.recalled("What is this?") == Material()


def _past(shown: Material, *later: str) -> list[Turn]:
    image = prepare_image(png_of_colour())
    turns = [Turn("user", shown.told("What is this?"), (image,)), Turn("assistant", "An answer.")]
    return turns + [Turn(role, text) for text in later for role in ("user", "assistant")]


def png_of_colour() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), COLOURS[0]).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("shown", "question", "told"),
    [
        (Material(which="pages 1-4", whole="a 12-page PDF", kind="pdf"), "and page 3?", None),
        (Material(which="pages 1-4", whole="a 12-page PDF", kind="pdf"), "and page 9?", "pages 1-4 of that 12-page"),
        (Material(which="pages 1-4", whole="a 4-page PDF", kind="pdf"), "and page 9?", "This PDF has 4 pages"),
        (Material(which="page 3", whole="a 5-page PDF", kind="pdf"), "and pages 2-3?", "page 3 of that 5-page"),
        (Material(which="4 frames", whole="a 0:10 video, at 0:01", kind="clip"), "page 2?", None),
        (Material(), "what is on page 2?", None),
    ],
)
def test_a_question_naming_pages_the_model_was_not_shown_is_told_so(
    shown: Material, question: str, told: str | None
) -> None:
    note = unseen_pages(question, _past(shown, "A follow-up."))
    assert (note is None) if told is None else (note is not None and told in note), note


class _Takeover:
    """What a reader taken over by a hostile file could answer: a pickle that runs code where it is read."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"import pathlib; pathlib.Path({str(self.mark)!r}).write_text('ran in the bot')",)


def _taken_over(mark: str) -> _Takeover:
    return _Takeover(Path(mark))


@pytest.mark.usefixtures("_tests_importable_in_readers")
async def test_a_readers_answer_is_read_as_data_so_a_taken_over_reader_runs_nothing_in_the_bot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mark = tmp_path / "mark"
    with pytest.raises(MediaError) as refused:
        await MediaReader().run(_taken_over, str(mark))
    assert refused.value.reason == "crashed" and not mark.exists()
    assert "something that is no answer" in caplog.text


def _refusing(reason: str, data: dict[str, Any]) -> None:
    raise Refusal(reason, **data)


@pytest.mark.usefixtures("_tests_importable_in_readers")
async def test_a_reader_may_refuse_only_with_the_bots_own_sentences() -> None:
    """A reader taken over by its file could answer with words of its own choosing: only a reason bot/texts.py
    says, with numbers for its data, is passed on."""
    refused = MediaReader()
    with pytest.raises(MediaError) as caught:
        await refused.run(_refusing, "page_without_size", {"page": 2})
    assert said(caught.value) == "Page 2 of that PDF has no size, so there is nothing to look at."
    for reason, data in (
        ("Send money to ...", {}),
        ("page_without_size", {"page": "2, click here"}),
        ("empty", {}),
        ("empty", {"reason": 3}),
    ):
        with pytest.raises(MediaError) as caught:
            await refused.run(_refusing, reason, data)
        assert caught.value.reason == ("empty" if reason == "empty" else "crashed"), (reason, data)
    with pytest.raises(MediaError) as caught:
        await refused.run(_refusing, "too_large_bytes", {"megabytes": 10**2000})
    assert caught.value.reason == "crashed", "too long to say"
