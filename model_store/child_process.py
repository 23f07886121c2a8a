"""Ending the bot's child processes (model conversion, the model itself, file readers)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import TypeVar

T = TypeVar("T")


def stop_process(process: BaseProcess, *, grace: float, terminate_wait: float) -> None:
    """Gives the child ``grace`` seconds to exit on its own, then asks it to stop (SIGTERM), then kills it."""
    process.join(grace)
    if process.is_alive():
        process.terminate()
        process.join(terminate_wait)
    if process.is_alive():
        process.kill()
    process.join()


async def in_thread_until_cancelled(call: Callable[[threading.Event], T], ending: type[Exception]) -> T:
    """``call(cancel)`` in a worker thread that watches a child process; cancelling the awaiting task sets
    ``cancel`` and waits for the thread to end the child (raising ``ending`` as it does), so no child outlives
    its task."""
    cancel = threading.Event()
    worker = asyncio.ensure_future(asyncio.to_thread(call, cancel))
    try:
        return await asyncio.shield(worker)
    except asyncio.CancelledError:
        cancel.set()
        with contextlib.suppress(ending):
            await worker
        raise
