"""The memory this process's control group still lets it take: a container's limit, or systemd's MemoryMax=.

``psutil.virtual_memory()`` reports the host's memory; inside a container limited to 16 GB on a 64 GB host it
would let a conversion start that the kernel kills once it passes the limit. The limit and the usage are read
from the cgroup files: cgroup v2's ``memory.max`` and ``memory.current``, or cgroup v1's
``memory.limit_in_bytes`` and ``memory.usage_in_bytes``. A limit set on an enclosing group (a systemd slice, a
pod) binds as well, so every group from this process's own up to the hierarchy's root is read and the
tightest one wins. Usage counts the working set, as ``docker stats`` does: the page cache the kernel can drop
at once (``inactive_file``) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# cgroup v1 says "no limit" with the largest page-aligned counter (9223372036854771712 with 4 KiB pages).
V1_UNLIMITED = 2**62


@dataclass(frozen=True)
class CgroupMemory:
    """One group's limit and what its processes use of it, in bytes."""

    limit_bytes: int
    used_bytes: int

    @property
    def available_bytes(self) -> int:
        return max(self.limit_bytes - self.used_bytes, 0)


@dataclass(frozen=True)
class _Files:
    limit: str
    usage: str
    unlimited_at: int | None  # v2 writes "max" instead


_V1 = _Files("memory.limit_in_bytes", "memory.usage_in_bytes", V1_UNLIMITED)
_V2 = _Files("memory.max", "memory.current", None)


def _hierarchy(root: Path) -> tuple[Path, PurePosixPath, _Files] | None:
    """Where this process's memory controller is mounted, its group's path in it, and which file names apply.

    A v1 ``memory`` line wins over the v2 ``0::`` line: on a hybrid host the v2 hierarchy exists, but the memory
    controller is bound to v1.
    """
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    unified: PurePosixPath | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return root / "sys/fs/cgroup/memory", PurePosixPath(path), _V1
        if controllers == "":
            unified = PurePosixPath(path)
    if unified is None:
        return None
    return root / "sys/fs/cgroup", unified, _V2


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _inactive_file(group: Path) -> int:
    try:
        lines = (group / "memory.stat").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        name, _, value = line.partition(" ")
        if name in ("inactive_file", "total_inactive_file") and value.strip().isdigit():
            return int(value)
    return 0


def _group(directory: Path, files: _Files) -> CgroupMemory | None:
    limit = _read_number(directory / files.limit)
    if limit is None or (files.unlimited_at is not None and limit >= files.unlimited_at):
        return None
    usage = _read_number(directory / files.usage) or 0
    return CgroupMemory(limit_bytes=limit, used_bytes=max(usage - _inactive_file(directory), 0))


def tightest_limit(root: Path = Path("/")) -> CgroupMemory | None:
    """The limited group with the least memory left among this process's group and those enclosing it; None
    where no group sets a limit, or the cgroup files cannot be read. ``root``: where ``/proc`` and ``/sys`` are."""
    found = _hierarchy(root)
    if found is None:
        return None
    mount, path, files = found
    # Inside a container the mount shows the container's own group at its top, while /proc/self/cgroup may still
    # name the host's path to it (cgroup v1): directories that do not exist are passed over.
    directories = [mount / str(parent).lstrip("/") for parent in (path, *path.parents)]
    groups = [group for directory in directories if (group := _group(directory, files)) is not None]
    return min(groups, key=lambda group: group.available_bytes, default=None)
