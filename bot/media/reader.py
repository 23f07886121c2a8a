"""Reading the files people send (photos, image files, PDFs, clips, recordings) in a process of its own, with a
deadline, a memory limit and a memory of what it read.

Why a process: Pillow's decoders, PDFium and FFmpeg are C libraries reading files from strangers.  A page that draws
one large image a few thousand times renders for minutes, a clip can be built to decode slowly, a small PNG can hold
40 megapixels that take a great deal of memory to decode (benchmarks/hostile_files.py), and a crash in any of them
would take the bot with it.  A thread cannot be stopped, and one decoding in the bot's process takes the bot's
memory and holds its event loop; a child process can be stopped, so past ``READ_SECONDS`` the work is killed and the
person told, a crash is a refusal like any other, and the bot's event loop and memory stay free for every other
chat.  The child starts as every child of the bot does (model_store/child_start.py): it dies with the bot, sees
none of its secrets, and is confined to the files Python and its libraries need: no ``.env``, no history, no
TCP.  At most ``CONCURRENT`` PDFs and clips are read at once, one
per core, and ``PHOTOS_AT_ONCE`` photos beside them, so that slow files never keep a photo waiting.

Memory: a child's address space (RLIMIT_AS) is what its libraries take when it starts plus ``memory_mb``
(READER_MEMORY_MB), so a file that needs more is refused with a reason instead of pushing the machine, and the
model's process beside it, into swap; and the kernel is told to end a reader first (oom_score_adj 1000) if memory
runs out all the same.  Counting from the libraries' own size keeps the limit the same on a machine whose thread
stacks and library mappings are larger.

What a file gave, or why it was refused, is remembered per file (``remembered``, bounded in bytes): a reply to the
same clip costs neither a download nor a read, and a file that took the whole deadline to refuse is not read again.
Starting a child per photo adds a small part of what a photo question costs (benchmarks/hostile_files.py measures
both), so no child is kept waiting for the next file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import pickle
import resource
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar, cast

from cachetools import LRUCache, TTLCache

from bot import texts
from bot.media.frames import Frames, sample
from bot.media.pages import NoSuchPage, Pages, render
from bot.media.refusal import Refusal
from bot.media.sound import Sound, listen
from bot.media.stills import Still, still
from model_store.child_process import in_thread_until_cancelled, stop_process
from model_store.child_start import Confinement, new_child, receive

log = logging.getLogger(__name__)

READ_SECONDS = 30.0
CONCURRENT = 2  # PDFs and clips read at once, one per core
PHOTOS_AT_ONCE = 1  # photos have a place of their own: a slow PDF or clip never keeps a photo waiting
MEMORY_MB = 1536
REMEMBERED_BYTES = 64 * 1024 * 1024  # files' images and refusals kept for a reply to the same file
POLL_SECONDS = 0.1
CHILD_NAME = "phi3bot-read"
CONFINEMENT = Confinement()  # the file comes through a pipe: nothing to read or write beyond running Python
ANSWERS = (Still, Frames, Pages, Sound)
ANSWER_CLASSES = frozenset((answer.__module__, answer.__qualname__) for answer in ANSWERS)
REFUSAL_CHARACTERS = 1000  # a child's refusal, as said to the person who sent the file
# Why a read failed, as MediaError.reason.  A refusal is the file's own, and remembered with it, unless it refuses
# the question (pages the PDF lacks) or comes from a shutdown: for a while when a busy machine (too slow) or the
# out-of-memory killer (crashed) may have had a part in it, otherwise for good.
NOT_OF_THE_FILE = (NoSuchPage.REASON, "stopping")
FOR_A_WHILE = ("too_slow", "crashed")
TRANSIENT_SECONDS = 600.0
TRANSIENT_REMEMBERED = 1024
T = TypeVar("T")


class MediaError(Refusal):
    """Why a file cannot be read: the refusal its reader gave (bot/media/refusal.py), or "too_slow", "crashed",
    "too_large" (more memory than the reader may take) or "stopping" (the bot shuts down)."""


@dataclass
class _Turns:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding the lock or waiting for it


@dataclass(frozen=True)
class _Refused:
    reason: str
    data: dict[str, object]


class MediaReader:
    """The bot's one way to read the files people send; owns how many are read at once, for how long, with how
    much memory, what was read, and stopping them all at shutdown."""

    def __init__(
        self,
        seconds: float = READ_SECONDS,
        concurrent: int = CONCURRENT,
        memory_mb: int = MEMORY_MB,
        remembered_bytes: int = REMEMBERED_BYTES,
    ) -> None:
        self.seconds = seconds
        self.memory_bytes = memory_mb * 1024 * 1024
        self._slots = asyncio.Semaphore(concurrent)
        self._photo_slots = asyncio.Semaphore(PHOTOS_AT_ONCE)
        self._people: dict[int, _Turns] = {}  # people with a file being read or waiting: one at a time each
        self._stopping = threading.Event()
        self._remembered: LRUCache[Hashable, object] = LRUCache(remembered_bytes, getsizeof=_size)
        self._for_a_while: TTLCache[str, _Refused] = TTLCache(TRANSIENT_REMEMBERED, TRANSIENT_SECONDS)

    def stop(self) -> None:
        """At shutdown: every read ends at once (its child is killed) and no new one starts."""
        self._stopping.set()

    @contextlib.asynccontextmanager
    async def for_person(self, person: int) -> AsyncIterator[None]:
        """One question's files of a person's downloaded and read at a time, whatever chats they ask in: one
        person's slow PDFs cannot hold both of the reader's places, nor their downloads pile up in memory."""
        turns = self._people.setdefault(person, _Turns())
        turns.users += 1
        try:
            async with turns.lock:
                yield
        finally:
            turns.users -= 1
            if not turns.users:
                del self._people[person]

    async def still(self, data: bytes) -> Still:
        """bot/media/stills.py's ``still``, in a child process, in the photos' own place: a photo takes a second at
        most, where a PDF or a clip may take the whole deadline."""
        return await self._run_in(self._photo_slots, still, data)

    async def pages(self, data: bytes, question: str, *, limit: int, num_crops: int) -> Pages:
        """bot/media/pages.py's ``render``, in a child process."""
        return await self.run(render, data, question, limit=limit, num_crops=num_crops)

    async def frames(self, data: bytes, *, limit: int, max_seconds: float, long_side: int) -> Frames:
        """bot/media/frames.py's ``sample``, in a child process."""
        return await self.run(sample, data, limit=limit, max_seconds=max_seconds, long_side=long_side)

    async def sound(self, data: bytes, *, max_seconds: float) -> Sound:
        """bot/media/sound.py's ``listen``, in a child process."""
        return await self.run(listen, data, max_seconds=max_seconds)

    async def remembered(self, file: str, read: Callable[[], Awaitable[T]], variant: Hashable = None) -> T:
        """What ``read()`` gave for ``file`` (an id that stays the same for the same file's bytes) and
        ``variant`` (whatever else the result depends on), or a refusal of the file, whatever the variant; read
        only when neither is remembered.  Refusals that depend on the question or on a shutdown are not kept."""
        refused = self._remembered.get(("refused", file)) or self._for_a_while.get(file)
        if isinstance(refused, _Refused):
            raise MediaError(refused.reason, **refused.data)
        key = ("read", file, variant)
        found = self._remembered.get(key)
        if found is not None:
            return cast(T, found)
        try:
            value = await read()
        except MediaError as error:
            if error.reason in FOR_A_WHILE:
                self._for_a_while[file] = _Refused(error.reason, error.data)
            elif error.reason not in NOT_OF_THE_FILE:
                self._keep(("refused", file), _Refused(error.reason, error.data))
            raise
        self._keep(key, value)
        return value

    def _keep(self, key: Hashable, value: object) -> None:
        with contextlib.suppress(ValueError):  # larger than the whole memory: not kept
            self._remembered[key] = value

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` in a child process; raises MediaError, with its reason, when it
        refuses the file, crashes, runs out of memory, outlives the deadline or the bot stops.  Cancelling the
        caller stops the child at once."""
        return await self._run_in(self._slots, function, *args, **kwargs)

    async def _run_in(self, slots: asyncio.Semaphore, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with slots:
            if self._stopping.is_set():
                raise MediaError("stopping")
            call = functools.partial(_in_child, function, args, kwargs, self.seconds, self.memory_bytes, self._stopping)
            return await in_thread_until_cancelled(call, MediaError)


def _size(value: object) -> int:
    """Bytes a remembered value takes, roughly: its images; a refusal, a little."""
    if isinstance(value, Still):
        return len(value.data) + 256
    if isinstance(value, Sound):
        return len(value.samples) + 256
    if isinstance(value, Frames | Pages):
        return sum(len(image) for image in value.images) + 256
    return 1024


def _in_child(
    function: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seconds: float,
    memory_bytes: int,
    *ends: threading.Event,
) -> T:
    """Runs in a worker thread: starts the child, waits for its answer until the deadline or one of ``ends``."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = new_child(
        _child_main, (sender, function, args, kwargs, seconds, memory_bytes), name=CHILD_NAME, confinement=CONFINEMENT
    )
    answered = False
    try:
        child.start()  # hands the child the file itself: up to 20 MB through the pipe
        sender.close()
        waited = 0.0
        while not receiver.poll(POLL_SECONDS):
            waited += POLL_SECONDS
            if any(end.is_set() for end in ends):
                raise MediaError("stopping")
            if waited >= seconds:
                log.warning("reading a file took over %.0f s; stopped", seconds)
                raise MediaError("too_slow", seconds=seconds)
        outcome, value, data = _answer(receiver)
        answered = True
    except (EOFError, OSError) as error:
        log.warning("the file reader ended without an answer (%s, exit code %s)", error, child.exitcode)
        raise MediaError("crashed") from None
    except (pickle.UnpicklingError, ValueError) as error:
        log.warning("the file reader answered with something that is no answer (%s); refused", error)
        raise MediaError("crashed") from None
    finally:
        if child.pid is not None:
            stop_process(child, grace=1.0 if answered else 0.0, terminate_wait=1.0)
            child.close()
        sender.close()
        receiver.close()
    if outcome == "refused":
        raise MediaError(value, **data)
    return cast(T, value)


def _answer(receiver: Connection) -> tuple[str, Any, dict[str, object]]:
    """The child's answer, read as data: ("done", plain values or one of ANSWERS, {}) or ("refused", a reason,
    its numbers) that bot/texts.py says in at most REFUSAL_CHARACTERS.  A reader taken over by the file it read
    can answer nothing else."""
    outcome, value, data = receive(receiver, ANSWER_CLASSES)
    if outcome == "done" or (outcome == "refused" and _sayable(value, data)):
        return outcome, value, data
    raise ValueError(f"an answer of {outcome!r} with a {type(value).__name__}")


def _sayable(reason: object, data: object) -> bool:
    """Whether a child's refusal is one of the bot's sentences, with numbers for its data."""
    if not isinstance(reason, str) or not isinstance(data, dict):
        return False
    if not all(isinstance(key, str) and isinstance(value, int | float) for key, value in data.items()):
        return False
    try:
        return len(texts.refusal(reason, data)) <= REFUSAL_CHARACTERS
    except (KeyError, TypeError, ValueError, IndexError):
        return False


def _child_main(
    sender: Connection,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seconds: float,
    memory_bytes: int,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is for the bot, which ends this child
    # Should the bot be killed without ending it, the child still stops, at the same deadline, in CPU time.
    resource.setrlimit(resource.RLIMIT_CPU, (int(seconds) + 5, int(seconds) + 10))
    _limit_memory(memory_bytes)
    outcome: tuple[str, Any, dict[str, object]]
    try:
        outcome = ("done", function(*args, **kwargs), {})
    except Refusal as refusal:
        outcome = ("refused", refusal.reason, refusal.data)
    except MemoryError:
        outcome = ("refused", "too_large", {})
    except Exception:  # a library failing in a way it does not document: still the file's fault, and a refusal
        logging.getLogger(__name__).exception("reading a file failed")
        outcome = ("refused", "crashed", {})
    sender.send(outcome)
    sender.close()


def _limit_memory(memory_bytes: int) -> None:
    """Best effort, where Linux allows it: the address space this process has now (its libraries, mapped when
    they were imported) plus ``memory_bytes``, and first in line for the out-of-memory killer."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
        limit = pages * resource.getpagesize() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError) as error:
        logging.getLogger(__name__).warning("the file reader's memory is not limited: %s", error)
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
