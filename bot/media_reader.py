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
import functools
import logging
import multiprocessing
import resource
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

from bot.frames import Frames, VideoError, sample
from bot.pages import DocumentError, Pages, render
from model_store.child_process import in_thread_until_cancelled, stop_process

log = logging.getLogger(__name__)

READ_SECONDS = 30.0
CONCURRENT = 2
POLL_SECONDS = 0.1
TOO_SLOW = "That file takes too long to read (over {seconds:.0f} s), so I gave up on it. Please send a simpler one."
CRASHED = "I couldn't read that file: the reader stopped on it. Please send it in another form."
STOPPING = "I'm restarting, so I couldn't read that file. Please send it again in a minute."
CHILD_NAME = "phi3bot-read"
T = TypeVar("T")


class MediaError(Exception):
    """A friendly reason why a PDF or a clip cannot be read, for the person who sent it."""


class MediaReader:
    """The bot's one way to read PDFs and clips; owns how many are read at once, for how long, and stopping
    them all at shutdown."""

    def __init__(self, seconds: float = READ_SECONDS, concurrent: int = CONCURRENT) -> None:
        self.seconds = seconds
        self._slots = asyncio.Semaphore(concurrent)
        self._stopping = threading.Event()

    def stop(self) -> None:
        """At shutdown: every read ends at once (its child is killed) and no new one starts."""
        self._stopping.set()

    async def pages(self, data: bytes, question: str, *, limit: int, num_crops: int) -> Pages:
        """bot/pages.py's ``render``, in a child process."""
        return await self.run(render, data, question, limit=limit, num_crops=num_crops)

    async def frames(self, data: bytes, *, limit: int, max_seconds: float, long_side: int) -> Frames:
        """bot/frames.py's ``sample``, in a child process."""
        return await self.run(sample, data, limit=limit, max_seconds=max_seconds, long_side=long_side)

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` in a child process; raises MediaError with a friendly reason when it
        refuses the file, crashes, outlives the deadline or the bot stops.  Cancelling the caller stops the
        child at once."""
        async with self._slots:
            if self._stopping.is_set():
                raise MediaError(STOPPING)
            call = functools.partial(_in_child, function, args, kwargs, self.seconds, self._stopping)
            return await in_thread_until_cancelled(call, MediaError)


def _in_child(
    function: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seconds: float,
    *ends: threading.Event,
) -> T:
    """Runs in a worker thread: starts the child, waits for its answer until the deadline or one of ``ends``."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, function, args, kwargs, seconds), name=CHILD_NAME)
    child.daemon = True
    answered = False
    try:
        child.start()  # hands the child the file itself: up to 20 MB through the pipe
        sender.close()
        waited = 0.0
        while not receiver.poll(POLL_SECONDS):
            waited += POLL_SECONDS
            if any(end.is_set() for end in ends):
                raise MediaError(STOPPING)
            if waited >= seconds:
                log.warning("reading a file took over %.0f s; stopped", seconds)
                raise MediaError(TOO_SLOW.format(seconds=seconds))
        outcome, value = receiver.recv()
        answered = True
    except (EOFError, OSError) as error:
        log.warning("the file reader ended without an answer (%s, exit code %s)", error, child.exitcode)
        raise MediaError(CRASHED) from None
    finally:
        if child.pid is not None:
            stop_process(child, grace=1.0 if answered else 0.0, terminate_wait=1.0)
            child.close()
        sender.close()
        receiver.close()
    if outcome == "refused":
        raise MediaError(value)
    return cast(T, value)


def _child_main(
    sender: Connection, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], seconds: float
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is for the bot, which ends this child
    # Should the bot be killed without ending it, the child still stops, at the same deadline, in CPU time.
    resource.setrlimit(resource.RLIMIT_CPU, (int(seconds) + 5, int(seconds) + 10))
    try:
        outcome: tuple[str, Any] = ("done", function(*args, **kwargs))
    except (DocumentError, VideoError) as refusal:
        outcome = ("refused", str(refusal))
    except Exception:  # a library failing in a way it does not document: still the file's fault, and a refusal
        logging.getLogger(__name__).exception("reading a file failed")
        outcome = ("refused", CRASHED)
    sender.send(outcome)
    sender.close()
