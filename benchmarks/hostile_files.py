"""Hostile files against the real bot (issue 23, item 2): what they cost the bot's process, its event loop and
the other chats, and what they cost the file reader's children.

The scenario: the real bot (python-telegram-bot over HTTP against the stand-in Bot API server, history in
SQLite, the tiny synthetic model) streams a long answer in one chat; then four 40-megapixel RGBA PNGs (164 KB
each, sent as files with a question) and two Matroska files whose header says 64×64 and whose frames are
16000×16000 JPEGs (9 MB each) arrive at once, each in a chat of its own.  A ticker task measures how late the
event loop wakes it (every 10 ms), psutil samples the bot's own process (its children, the model and the
readers, not counted), and the streaming chat's edits are timed.  The scenario runs in a fresh process of its
own, so that what the process holds is the bot's and the stand-in server's, not what building the model left.

Then, each in a reader's child as the bot reads it: the time and peak memory of each hostile file, a legitimate
10-minute 1080p video, and what reading a photo in a child costs against decoding it in the bot's process
(a spawn per photo: is a child kept waiting worth it?).

Usage: python benchmarks/hostile_files.py [--store DIR]
       python benchmarks/hostile_files.py --scenario STORE DATA_DIR OUT.json   (the scenario alone, in this
       process: tests/test_bot_hostile_files.py runs it so)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from benchmarks.common import BENCH_DIR, write_results

ROOT = Path(__file__).resolve().parents[1]
STREAMING = 5000  # the chat whose answer streams meanwhile
PNG_CHATS = (5001, 5002, 5003, 5004)
CLIP_CHATS = (5101, 5102)
MAX_NEW_TOKENS = 8192  # the most allowed: the streaming answer lasts as long as the tiny model can make it
TICK = 0.01


class LoopWatch:
    """How late the event loop wakes a task sleeping ``TICK`` seconds, and the process's resident memory.

    A late wake-up has two causes: the loop was busy or blocked (a long callback, a wait for the GIL or a lock:
    the bot's doing), or its thread was ready to run and waited for a CPU (a machine busier than its cores, the
    model's process and the readers included).  The kernel counts the second per thread (schedstat's run
    delay), so each stall is also given without it: ``own``."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self._task: asyncio.Task[None] | None = None
        self.reset()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def reset(self) -> None:
        self.max_stall = self.max_own_stall = 0.0
        self.stalls_over_50ms = 0
        self.peak_rss = self.process.memory_info().rss

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        samples = 0
        while True:
            before, waited_before = loop.time(), _waited_for_a_cpu()
            await asyncio.sleep(TICK)
            stall = loop.time() - before - TICK
            self.max_stall = max(self.max_stall, stall)
            self.max_own_stall = max(self.max_own_stall, stall - (_waited_for_a_cpu() - waited_before))
            self.stalls_over_50ms += stall > 0.05
            samples += 1
            if samples % 5 == 0:
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _waited_for_a_cpu() -> float:
    """Seconds this thread has spent ready to run, waiting for a CPU (Linux's /proc schedstat)."""
    return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9


async def scenario(store_root: Path, data_dir: Path) -> dict[str, Any]:
    from bot import texts
    from bot.history import ConversationKey
    from devkit.bot_api_server import FakeBotApi
    from devkit.harness import bot_settings, running_bot, stored_messages, streaming, wait_answers
    from devkit.hostile_images import png_40_megapixels_rgba
    from devkit.media_files import header_lies_matroska

    png, matroska = png_40_megapixels_rgba(), header_lies_matroska()
    hostile = (*PNG_CHATS, *CLIP_CHATS)
    watch = LoopWatch()
    async with FakeBotApi() as api:
        users = ",".join(str(chat) for chat in (STREAMING, *hostile))
        settings = bot_settings(
            api,
            store_root,
            data_dir,
            allowed_user_ids=users,
            max_new_tokens=MAX_NEW_TOKENS,
            stream_drafts=False,
            user_requests_per_minute=600,
        )
        async with running_bot(api, settings, long_answers=True) as bot:
            watch.start()
            idle_rss = watch.process.memory_info().rss
            api.push_message(STREAMING, "Tell me a long story.", user_id=STREAMING)
            await api.wait_for(lambda: streaming(api, STREAMING), 60, "the long answer streaming")
            watch.reset()
            started = time.monotonic()
            for chat in PNG_CHATS:
                api.push_message(chat, document=(png, "scan.png", "image/png"), caption="What is this?", user_id=chat)
            for chat in CLIP_CHATS:
                document = (matroska, "clip.mkv", "video/x-matroska")
                api.push_message(chat, document=document, caption="What happens?", user_id=chat)
            replied: dict[int, float] = {}

            def all_replied() -> bool:
                for chat in hostile:
                    if chat not in replied and api.messages(chat):
                        replied[chat] = time.monotonic() - started
                return len(replied) == len(hostile)

            await api.wait_for(all_replied, 180, "a reply in every chat that sent a file")
            read, still_streaming = time.monotonic(), streaming(api, STREAMING)
            during = _edits_between(api, STREAMING, started, read)
            streamed_until = read if still_streaming else max(during, default=started)
            first_texts = {chat: api.messages(chat)[0].text for chat in hostile}
            await watch.stop()
            assert bot.services.engine is not None
            bot.services.engine.cancel_all()  # what was to be seen is seen: the long answers need not run on
            for chat in (STREAMING, *PNG_CHATS):
                await wait_answers(api, chat, 1, timeout=120)
            asked = [await stored_messages(bot.services.history, ConversationKey(chat)) for chat in PNG_CHATS]
    return {
        "files": {"png": {"bytes": len(png), "megapixels": 40}, "matroska": {"bytes": len(matroska)}},
        "max_stall_ms": round(watch.max_stall * 1000, 1),
        "max_stall_not_waiting_for_a_cpu_ms": round(watch.max_own_stall * 1000, 1),
        "stalls_over_50ms": watch.stalls_over_50ms,
        "idle_rss_mb": round(idle_rss / 2**20, 1),
        "peak_rss_mb": round(watch.peak_rss / 2**20, 1),
        "seconds_to_reply": {str(chat): round(seconds, 2) for chat, seconds in sorted(replied.items())},
        "replies": {
            "png_answered": all(len(stored) == 2 and len(stored[0].images) == 1 for stored in asked),
            "clips_refused": [first_texts[chat] for chat in CLIP_CHATS],
            "clip_refusal_expected": texts.CLIP_UNREADABLE,
            "not_failed": all(texts.FAILED not in text for text in first_texts.values()),
        },
        "streaming": {
            "seconds_to_read_all": round(read - started, 2),
            "seconds_streamed_meanwhile": round(streamed_until - started, 2),
            "edits_meanwhile": len(during),
            "longest_gap_s": round(_longest_gap(during, started, streamed_until), 2),
            "still_streaming_when_all_were_read": still_streaming,
        },
    }


def _edits_between(api: Any, chat: int, start: float, end: float) -> list[float]:
    methods = ("sendMessage", "editMessageText")
    return sorted(
        call.at
        for call in api.calls
        if call.method in methods and int(call.params.get("chat_id", 0)) == chat and start <= call.at <= end
    )


def _longest_gap(times: list[float], start: float, end: float) -> float:
    bounds = [start, *times, end]
    return max(later - earlier for earlier, later in itertools.pairwise(bounds))


def measured(function: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """In a reader's child: what ``function`` did, how long it took and the child's peak memory."""
    from bot import texts
    from bot.media.decoding import ImageRejected
    from bot.media.frames import VideoError

    started = time.monotonic()
    try:
        result = function(*args, **kwargs)
        outcome = f"{len(result.images)} frames" if hasattr(result, "images") else "a copy"
    except (VideoError, ImageRejected) as refusal:
        outcome = f"refused: {texts.refusal(refusal.reason, refusal.data)}"
    seconds = time.monotonic() - started
    status = Path("/proc/self/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return {"outcome": outcome, "seconds": round(seconds, 2), "peak_mb": round(peak_kb / 1024)}


async def in_readers() -> dict[str, Any]:
    from bot.media.frames import sample
    from bot.media.reader import MediaReader
    from bot.media.stills import still
    from devkit.hostile_images import png_40_megapixels_rgba
    from devkit.media_files import header_lies_matroska, huge_canvas_gif

    reader = MediaReader()
    frames = {"limit": 8, "max_seconds": 600, "long_side": 672}
    files: dict[str, Callable[[], Any]] = {
        "40 MP RGBA PNG (164 KB)": lambda: reader.run(measured, still, png_40_megapixels_rgba()),
        "Matroska, header 64x64, 16000x16000 JPEG frames (9 MB)": lambda: reader.run(
            measured, sample, header_lies_matroska(), **frames
        ),
        "GIF, 6000x6000 canvas, 2000 one-pixel frames (46 KB)": lambda: reader.run(
            measured, sample, huge_canvas_gif(), **frames
        ),
        "10-minute 1080p H.264 video": lambda: reader.run(measured, sample, ten_minute_video(), **frames),
    }
    results = {}
    for name, read in files.items():
        started = time.monotonic()
        figures = await read()
        results[name] = {**figures, "with_the_child_s_start": round(time.monotonic() - started, 2)}
        print(f"{name}: {results[name]}")
    return results


async def photo_costs(runs: int = 7) -> dict[str, Any]:
    """A photo question's reading: a child per photo (spawned, the photo read, its copy sent back, the copy
    decoded in the bot) against decoding the photo in the bot's process as before."""
    import os

    from bot.media.decoding import prepare_image
    from bot.media.reader import MediaReader

    reader = MediaReader()
    results: dict[str, Any] = {}
    spawn = []
    for _ in range(runs):
        started = time.monotonic()
        await reader.run(os.getpid)
        spawn.append(time.monotonic() - started)
    results["child_spawned_and_ended_s"] = round(statistics.median(spawn), 3)
    for name, size in (("640x480 JPEG", (640, 480)), ("4000x3000 JPEG (12 MP phone photo)", (4000, 3000))):
        photo = jpeg(size)
        child, in_process = [], []
        for _ in range(runs):
            started = time.monotonic()
            copy = await reader.still(photo)
            await asyncio.to_thread(prepare_image, copy.data)
            child.append(time.monotonic() - started)
            started = time.monotonic()
            await asyncio.to_thread(prepare_image, photo)
            in_process.append(time.monotonic() - started)
        results[name] = {
            "in_a_child_then_its_copy_decoded_s": round(statistics.median(child), 3),
            "decoded_in_the_bot_process_s": round(statistics.median(in_process), 3),
            "copy_bytes": len(copy.data),
            "copy_size": [copy.width, copy.height],
        }
        print(f"{name}: {results[name]}")
    return results


def jpeg(size: tuple[int, int]) -> bytes:
    from PIL import Image

    from benchmarks.common import synthetic_photo

    out = io.BytesIO()
    Image.fromarray(synthetic_photo(3, *size)).save(out, "JPEG", quality=90)
    return out.getvalue()


def ten_minute_video() -> bytes:
    """30 fps 1080p H.264 at x264's default key frame interval (250), 15 MB: under Telegram's 20 MB for bots.
    Made once (about 4 minutes) and kept in the benchmark directory."""
    path = BENCH_DIR / "ten-minutes-1080p.mp4"
    if not path.is_file():
        import av
        import numpy as np

        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        out = io.BytesIO()
        with av.open(out, "w", format="mp4") as muxer:
            stream = muxer.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
            stream.bit_rate = 200_000
            stream.options = {"preset": "ultrafast"}
            y, x = np.mgrid[0:1080, 0:1920]
            base = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
            for index in range(600 * 30):
                pixels = np.roll(base, index * 4, axis=1)
                muxer.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
            muxer.mux(stream.encode())
        path.write_bytes(out.getvalue())
    return path.read_bytes()


def tiny_model_store() -> Path:
    """The tiny synthetic Phi-3-vision converted to INT4, as the tests use it (built once, about 20 s)."""
    from devkit.synthetic.builder import build_synthetic_checkpoint
    from model_store.convert import ConversionRequest, convert_in_subprocess
    from model_store.store import ModelStore

    root = BENCH_DIR / "tiny-store"
    if not any(entry.precision == "int4" for entry in ModelStore(root).entries()):
        checkpoint = build_synthetic_checkpoint(BENCH_DIR / "tiny-checkpoint", "tiny")
        convert_in_subprocess(
            ConversionRequest(source=str(checkpoint), store_root=str(root), precision="int4", activate=True)
        )
    return root


def run_scenario(store: Path) -> dict[str, Any]:
    """The scenario in a fresh process, as the test runs it."""
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "scenario.json"
        command = [sys.executable, __file__, "--scenario", str(store), str(Path(work) / "data"), str(out)]
        subprocess.run(command, check=True, cwd=ROOT)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="a model store holding a tiny INT4 model (default: built)")
    parser.add_argument("--scenario", nargs=3, type=Path, metavar=("STORE", "DATA_DIR", "OUT"))
    args = parser.parse_args()
    if args.scenario:
        store, data_dir, out = args.scenario
        out.write_text(json.dumps(asyncio.run(scenario(store, data_dir)), indent=2))
        return
    through_the_bot = run_scenario(args.store or tiny_model_store())
    print(json.dumps(through_the_bot, indent=2))
    readers = asyncio.run(in_readers())
    photos = asyncio.run(photo_costs())
    path = write_results(
        "hostile_files", {"through_the_bot": through_the_bot, "in_readers": readers, "photo_reading": photos}
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
