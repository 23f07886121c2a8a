"""Linux's Landlock, through ctypes: a process gives up every file but the ones it names, for good.

Landlock needs no privilege and binds whoever calls it and every process it starts, root included; a process
under it also cannot ptrace, nor read the ``/proc`` files (``environ``, ``mem``, ``cwd``) of, processes outside
it.  Rights the running kernel does not know are left out (its ABI version says which); ABI 1 kernels are not
used, as there a file can never move between directories, which a conversion does.  There is no library on PyPI
for the three system calls that is kept up with the kernel, and they are a few lines.
"""

from __future__ import annotations

import ctypes
import functools
import os
import stat
from collections.abc import Iterable

MINIMUM_ABI = 2
# System call numbers, the same on every architecture (the calls are newer than the tables that differ).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights (linux/landlock.h), by the ABI that introduced them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ABI1_RIGHTS = (1 << 13) - 1  # the above, and removing and making every kind of file
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3 and 5
READ = EXECUTE | READ_FILE | READ_DIR
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # what a rule on a file (not a directory) takes
_TCP_BIND_AND_CONNECT = (1 << 0) | (1 << 1)  # ABI 4
_SCOPE_ABSTRACT_SOCKETS_AND_SIGNALS = (1 << 0) | (1 << 1)  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _call(result: int) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


@functools.cache
def abi_version() -> int:
    """The Landlock ABI this kernel offers; 0 where it has none (not built in, or switched off at boot)."""
    try:
        version = _libc().syscall(
            ctypes.c_long(_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
        )
    except (AttributeError, OSError):  # not Linux
        return 0
    return max(int(version), 0)


def _filesystem_rights(abi: int) -> int:
    rights = _ABI1_RIGHTS | REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def restrict(readable: Iterable[str], writable: Iterable[str], *, network: bool) -> None:
    """From now on this process (the calling thread, and every thread and process it starts later) reads,
    lists and runs only what is under ``readable`` and ``writable``, and changes only what is under
    ``writable``; ``network`` False also takes TCP (on ABI 4 and later).  Paths that do not exist are skipped.
    Raises OSError if the kernel refuses; the caller checked ``abi_version() >= MINIMUM_ABI``."""
    abi = abi_version()
    handled = _filesystem_rights(abi)
    attributes = _RulesetAttr(
        handled_access_fs=handled,
        handled_access_net=_TCP_BIND_AND_CONNECT if not network and abi >= 4 else 0,
        scoped=_SCOPE_ABSTRACT_SOCKETS_AND_SIGNALS if abi >= 6 else 0,
    )
    libc = _libc()
    ruleset = _call(
        libc.syscall(
            ctypes.c_long(_CREATE_RULESET),
            ctypes.byref(attributes),
            ctypes.c_size_t(ctypes.sizeof(attributes)),
            ctypes.c_uint32(0),
        )
    )
    try:
        for paths, rights in ((readable, READ), (writable, handled)):
            for path in paths:
                _allow(libc, ruleset, path, rights)
        no = ctypes.c_ulong(0)
        _call(libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), no, no, no))  # required of the unprivileged
        _call(libc.syscall(ctypes.c_long(_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)))
    finally:
        os.close(ruleset)


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
    try:
        descriptor = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(descriptor).st_mode):
            rights &= _FILE_RIGHTS
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=descriptor)
        _call(
            libc.syscall(
                ctypes.c_long(_ADD_RULE),
                ctypes.c_int(ruleset),
                ctypes.c_int(_RULE_PATH_BENEATH),
                ctypes.byref(rule),
                ctypes.c_uint32(0),
            )
        )
    finally:
        os.close(descriptor)
