"""Hostile files in flight through the real bot (issue 23, item 2): four 40-megapixel PNGs and two Matroska
files whose 16000×16000 frames hide behind a 64×64 header, while another chat's answer streams.

The scenario is benchmarks/hostile_files.py's, run in a fresh process so that the memory measured is the bot's
(and the stand-in server's), not what building the test model left in pytest's.  A late event loop is counted
without the time its thread waited for a CPU: on a machine running more than its cores can (the model's
process, the readers, and here other test suites), that wait is the machine's, and the benchmark reports it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from bot import texts
from model_store.store import ModelEntry, ModelStore

ROOT = Path(__file__).parents[1]


async def test_hostile_files_in_flight_neither_stall_the_loop_nor_grow_the_bot_and_others_stream(
    int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    out = tmp_path / "figures.json"
    scenario = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "benchmarks" / "hostile_files.py"),
        "--scenario",
        str(int4_store[0].root),
        str(tmp_path / "data"),
        str(out),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert await asyncio.wait_for(scenario.wait(), 300) == 0
    figures = json.loads(out.read_text())
    assert figures["max_stall_not_waiting_for_a_cpu_ms"] < 100, figures
    assert figures["peak_rss_mb"] < 300, figures
    streamed = figures["streaming"]  # as long as the tiny model's longest answer lasts, or the reading
    assert streamed["seconds_streamed_meanwhile"] >= min(3.0, streamed["seconds_to_read_all"]), figures
    assert streamed["longest_gap_s"] < 1.0, figures
    replies = figures["replies"]
    assert replies["png_answered"] and replies["not_failed"], figures
    assert replies["clips_refused"] == [texts.CLIP_UNREADABLE, texts.CLIP_UNREADABLE], figures
