"""How every child process of the bot starts: the model's, each file reader, a conversion.

A child is spawned (the bot's threads, and OpenVINO's, do not survive a fork) and, before it does anything else:

- asks Linux to kill it as soon as the bot's thread that started it ends (``PR_SET_PDEATHSIG``), and exits if the
  bot is gone already: a bot killed with SIGKILL leaves no conversion holding gigabytes and no model generating
  for nobody behind;
- becomes non-dumpable, as the bot is: a process it starts (a conversion's export, which runs a repository's
  code) can neither trace it nor read its memory or its pipes' ends in ``/proc``;
- if it is given a ``Confinement`` (file readers, which parse strangers' files with C libraries, and conversions,
  which run a repository's Python code), gives up every file but what Python, its libraries and its own work
  need (model_store/landlock.py): ``.env``, the history database and the rest of the data directory are out of
  its reach, and so is tracing the bot.

Its environment is the bot's, which bot/running/secrecy.py cut down to an allow-list at start-up (a spawned child gets
its parent's, whatever ``multiprocessing`` is told).  The child's function and arguments are unpickled only
after the confinement, so the modules they import, and the threads those start (numpy's, FFmpeg's), are
confined too; Landlock binds the thread that asks and what it starts later, not threads already running.  For
that reason this module imports only the standard library (and model_store/landlock.py, which does too), what a
conversion's child reads before it is confined is ``huggingface_hub.constants``, and bot/terminal/cli.py, which a
spawned child imports first as the bot's main module, starts no thread either.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import site
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

from model_store import landlock

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # prctl(2)
PR_SET_DUMPABLE = 4
ANSWER_BYTES_MAX = 128 * 1024 * 1024  # one answer: at most 10 pages or frames of at most 1344 px (about 75 MB)
PROJECT_PACKAGES = ("bot", "engine", "model_store")  # their directories only: an editable install's root holds .env
# What a confined child may read besides Python and the project: the system's libraries, and the few files and
# kernel views programs read at start (not /proc as a whole: other processes' environments are there).
SYSTEM_READABLE = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/sys",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/pki/tls/certs",
    "/etc/pki/ca-trust",
    "/etc/fonts",
    "/etc/passwd",
    "/etc/group",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/filesystems",
    "/proc/sys",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
)
SYSTEM_WRITABLE = ("/dev/null", "/proc/self")  # /proc/self: its own (a reader sets its oom_score_adj)
# OpenVINO's telemetry reads its client id there and fails if it cannot: readable for conversions and exports.
OPENVINO_TELEMETRY = str(Path.home() / "intel")


@dataclass(frozen=True)
class Confinement:
    """What a child handling strangers' input or a repository's code may touch besides running Python (which
    ``new_child`` adds)."""

    readable: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()  # made if missing (and possible)
    network: bool = False  # TCP, where the kernel can take it (Landlock ABI 4)
    private_temp: bool = False  # a temporary directory of its own as TMPDIR, removed when the child ends
    hugging_face: bool = False  # Hugging Face's caches (written), as the child finds them

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """In the child: confined until it exits (there is no way back)."""
        readable, writable = [*self.readable], [*self.writable]
        if self.hugging_face:
            writable += _hugging_face_caches()
        for directory in writable:
            with contextlib.suppress(OSError):  # one it cannot make it will not need, or says why it needed it
                Path(directory).mkdir(parents=True, exist_ok=True)
        temporary = tempfile.mkdtemp(prefix="phi3bot-") if self.private_temp else None
        if temporary is not None:
            os.environ["TMPDIR"] = tempfile.tempdir = temporary
            writable.append(temporary)
        try:
            if landlock.abi_version() >= landlock.MINIMUM_ABI:  # otherwise the bot said so once (_say_if_unconfined)
                landlock.restrict(readable, [*SYSTEM_WRITABLE, *writable], network=self.network)
            yield
        finally:
            if temporary is not None:
                shutil.rmtree(temporary, ignore_errors=True)


def runtime_readable() -> list[str]:
    """The interpreter, its standard library and site-packages, the project's packages, and the system's."""
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, *site.getsitepackages()}
    if site.ENABLE_USER_SITE:
        prefixes.add(site.getusersitepackages())
    root = Path(__file__).resolve().parents[1]
    loader_paths = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    certificates = [os.environ.get(name, "") for name in ("SSL_CERT_FILE", "SSL_CERT_DIR")]
    named = [*prefixes, *(str(root / name) for name in PROJECT_PACKAGES), *loader_paths, *certificates]
    return [*(path for path in named if path), *SYSTEM_READABLE]


def _hugging_face_caches() -> list[str]:
    """Where huggingface_hub keeps downloads and transformers a repository's code (by default HF_HOME's hub, xet
    and modules); the rest of HF_HOME, the tokens ``hf auth login`` stored included (the bot reads them and
    hands the conversion the one it needs: bot/settings.py), is nobody's business.  Resolved in the child, by
    the library, from the environment it has."""
    from huggingface_hub import constants

    return [constants.HF_HUB_CACHE, constants.HF_XET_CACHE, modules_cache()]


def modules_cache() -> str:
    """Where transformers copies a repository's code to import it (as transformers finds it)."""
    from huggingface_hub import constants

    return os.environ.get("HF_MODULES_CACHE", str(Path(constants.HF_HOME) / "modules"))


class _Work:
    """A child's function and arguments; pickled on their own inside the process object, while it is pickled
    for spawning (so pipes among the arguments reach the child as usual), and unpickled by the child later."""

    def __init__(self, target: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.target, self.args = target, args

    def __reduce__(self) -> tuple[type[_PickledWork], tuple[bytes]]:
        return _PickledWork, (bytes(ForkingPickler.dumps((self.target, self.args))),)


@dataclass(frozen=True)
class _PickledWork:
    data: bytes

    def run(self) -> None:
        target, args = pickle.loads(self.data)  # noqa: S301 (from the bot, through the spawn pipe)
        target(*args)


def new_child(
    target: Callable[..., object], args: tuple[Any, ...], *, name: str, confinement: Confinement | None = None
) -> BaseProcess:
    """A daemon process (not started yet) that runs ``target(*args)`` after the steps above."""
    if confinement is not None:
        _say_if_unconfined()
        confinement = replace(confinement, readable=(*confinement.readable, *runtime_readable()))
    context = multiprocessing.get_context("spawn")
    work = _Work(target, args)
    return context.Process(target=_start, args=(os.getpid(), confinement, work), name=name, daemon=True)


@functools.cache
def _say_if_unconfined() -> None:
    abi = landlock.abi_version()
    if abi < landlock.MINIMUM_ABI:
        log.warning(
            "this kernel has no Landlock (ABI %d, %d needed): file readers and conversions can read every file "
            "this user can, .env included",
            abi,
            landlock.MINIMUM_ABI,
        )


def _start(parent: int, confinement: Confinement | None, work: _PickledWork) -> None:
    die_with(parent)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    with confinement.entered() if confinement is not None else contextlib.nullcontext():
        work.run()


def die_with(parent: int) -> None:
    """Linux sends this process SIGKILL when the thread that started it ends (the bot starts children from its
    main thread or from worker threads that live as long as its event loop, a conversion its export from its
    main thread); one that ended before the request was made is seen in the parent's pid."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


class _DataOnly(pickle.Unpickler):
    """Unpickles plain values (numbers, strings, bytes, tuples, lists, dicts) and the classes named, nothing else:
    a pickle can call any function the parent can import, and a confined child may have been taken over by the
    file it read or the code it ran."""

    def __init__(self, data: bytes, classes: frozenset[tuple[str, str]]) -> None:
        super().__init__(io.BytesIO(data))
        self._classes = classes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._classes:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a child may not answer with {module}.{name}")


def receive(connection: Connection, classes: frozenset[tuple[str, str]] = frozenset()) -> Any:
    """What a child sent, read as data (``Connection.recv`` would run whatever the pickle names in this process);
    raises EOFError or OSError as ``recv`` does (OSError too for an answer over ANSWER_BYTES_MAX), and
    pickle.UnpicklingError for anything but plain values and ``classes`` (module, name)."""
    return _DataOnly(connection.recv_bytes(ANSWER_BYTES_MAX), classes).load()
