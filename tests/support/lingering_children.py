"""``phi3bot`` whose ``models`` command starts a file reader and a conversion (its ``run_conversion`` replaced,
in the child too, as this module is the children's main module) the way the bot does; each prints its pid and
sleeps for a minute, for a test that kills this process.  Otherwise the real command."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import bot.terminal.cli
import model_store.convert.process
from bot.media.reader import MediaReader
from bot.settings import Settings
from model_store.convert import ConversionRequest, convert_in_subprocess
from model_store.progress import ProgressCallback
from model_store.store import ModelEntry

CHECKPOINT = "checkpoint"  # an empty directory in the working directory, the conversion's source
SLEEP_SECONDS = 60


def linger(*_: object) -> None:
    print(f"child {os.getpid()}", flush=True)
    time.sleep(SLEEP_SECONDS)


async def _children_linger(request: ConversionRequest) -> int:
    reader = MediaReader(seconds=SLEEP_SECONDS * 2)
    await asyncio.gather(reader.run(linger), asyncio.to_thread(convert_in_subprocess, request))
    return 0


def _conversion_lingers(request: ConversionRequest, progress: ProgressCallback) -> ModelEntry:
    linger()
    raise AssertionError("killed before")


model_store.convert.process.run_conversion = _conversion_lingers  # type: ignore[assignment]


def _models(settings: Settings) -> int:
    request = ConversionRequest(source=str(Path(CHECKPOINT).resolve()), store_root=str(settings.store_dir.resolve()))
    return asyncio.run(_children_linger(request))


bot.terminal.cli._models = _models

if __name__ == "__main__":
    sys.exit(bot.terminal.cli.main())
