"""Reading the PDFs and clips people send in a process of its own, with a deadline.

Why a process: PDFium and FFmpeg are C libraries reading files from strangers.  A page that draws one large
image a few thousand times renders for minutes, a clip can be built to decode slowly, and a crash in either
library would take the bot with it.  A thread cannot be stopped; a child process can, so past
``READ_SECONDS`` the work is killed and the person told, a crash is a refusal like any other, and the bot's
event loop and thread pool stay free for every other chat.  The child is spawned, not forked (the bot's
threads do not survive a fork), and sees no secret (bot/settings.py removes them from the environment).
At most ``CONCURRENT`` files are read at once, one per core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

from bot.frames import Frames, VideoError, sample
from bot.pages import DocumentError, Pages, render
from model_store.child_process import stop_process

log = logging.getLogger(__name__)

READ_SECONDS = 30.0
CONCURRENT = 2
POLL_SECONDS = 0.1
TOO_SLOW = "That file takes too long to read (over {seconds:.0f} s), so I gave up on it. Please send a simpler one."
CRASHED = "I couldn't read that file: the reader stopped on it. Please send it in another form."
T = TypeVar("T")


class MediaError(Exception):
    """A friendly reason why a PDF or a clip cannot be read, for the person who sent it."""


class MediaReader:
    """The bot's one way to read PDFs and clips; owns how many are read at once and for how long."""

    def __init__(self, seconds: float = READ_SECONDS, concurrent: int = CONCURRENT) -> None:
        self.seconds = seconds
        self._slots = asyncio.Semaphore(concurrent)

    async def pages(self, data: bytes, question: str, *, limit: int, num_crops: int) -> Pages:
        """bot/pages.py's ``render``, in a child process."""
        return await self.run(render, data, question, limit=limit, num_crops=num_crops)

    async def frames(self, data: bytes, *, limit: int, max_seconds: float, long_side: int) -> Frames:
        """bot/frames.py's ``sample``, in a child process."""
        return await self.run(sample, data, limit=limit, max_seconds=max_seconds, long_side=long_side)

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` in a child process; raises MediaError with a friendly reason when it
        refuses the file, crashes or outlives the deadline.  Cancelling the caller stops the child at once."""
        async with self._slots:
            cancel = threading.Event()
            worker = asyncio.ensure_future(asyncio.to_thread(_in_child, function, args, kwargs, self.seconds, cancel))
            try:
                return await asyncio.shield(worker)
            except asyncio.CancelledError:
                cancel.set()
                with contextlib.suppress(MediaError):
                    await worker
                raise


def _in_child(
    function: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], seconds: float, cancel: threading.Event
) -> T:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, function, args, kwargs), name="phi3bot-read", daemon=True)
    child.start()
    sender.close()
    try:
        waited = 0.0
        while not receiver.poll(POLL_SECONDS):
            waited += POLL_SECONDS
            if cancel.is_set():
                raise MediaError("cancelled")
            if waited >= seconds:
                log.warning("reading a file took over %.0f s; stopped", seconds)
                raise MediaError(TOO_SLOW.format(seconds=seconds))
        try:
            outcome, value = receiver.recv()
        except EOFError:
            log.warning("the file reader ended without an answer (exit code %s)", child.exitcode)
            raise MediaError(CRASHED) from None
    finally:
        stop_process(child, grace=1.0, terminate_wait=1.0)
        receiver.close()
    if outcome == "refused":
        raise MediaError(value)
    return cast(T, value)


def _child_main(
    sender: Connection, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    try:
        outcome: tuple[str, Any] = ("done", function(*args, **kwargs))
    except (DocumentError, VideoError) as refusal:
        outcome = ("refused", str(refusal))
    except Exception:  # a library failing in a way it does not document: still the file's fault, and a refusal
        logging.getLogger(__name__).exception("reading a file failed")
        outcome = ("refused", CRASHED)
    sender.send(outcome)
    sender.close()
