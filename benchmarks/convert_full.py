"""Convert the full-size synthetic Phi-3.5-vision to INT4 as `phi3bot convert` does, and print time and memory.

Usage: python benchmarks/convert_full.py [--precision int4]
Goal (issue 2): under 4 minutes on a 2-core machine, validation included.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BENCH_DIR, full_checkpoint, write_results
from bot.terminal.progress import TerminalProgress
from model_store.convert import ConversionRequest, convert_in_subprocess
from model_store.progress import Progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="int4", choices=("int4", "int8", "fp16"))
    args = parser.parse_args()
    checkpoint = full_checkpoint()
    store = BENCH_DIR / f"store-convert-{args.precision}"
    shutil.rmtree(store, ignore_errors=True)
    phases: dict[str, float] = {}
    terminal = TerminalProgress()
    started = time.monotonic()

    def on_progress(update: Progress) -> None:
        phases.setdefault(update.phase, time.monotonic() - started)
        terminal(update)

    entry = convert_in_subprocess(
        ConversionRequest(source=str(checkpoint), store_root=str(store), precision=args.precision), on_progress
    )
    total = time.monotonic() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    marks = [*sorted(phases.items(), key=lambda item: item[1]), ("end", total)]
    durations = {name: round(marks[i + 1][1] - start, 1) for i, (name, start) in enumerate(marks[:-1])}
    print(f"\n{'phase':<10} {'seconds':>8}")
    for name, seconds in durations.items():
        print(f"{name:<10} {seconds:>8.1f}")
    print(f"{'total':<10} {total:>8.1f}   (goal: 240)")
    print(f"peak RSS of the conversion process: {peak_gb:.1f} GB; model on disk: {entry.size_bytes / 1e9:.2f} GB")
    path = write_results(
        f"convert_full_{args.precision}",
        {
            "precision": args.precision,
            "total_seconds": round(total, 1),
            "phase_seconds": durations,
            "peak_rss_gb": round(peak_gb, 2),
            "model_bytes": entry.size_bytes,
            "validation": entry.manifest.get("validation"),
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
