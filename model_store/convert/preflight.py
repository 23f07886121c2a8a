"""Disk and memory checks before a conversion starts, so it fails in a second instead of after an hour.

The factors come from converting the full-size Phi-3.5-vision (``make bench-convert``; README, "Models"): the
export's peak memory against its weights, and the size of each precision's IR against the bf16 checkpoint.
Memory is the smaller of what the host has available and what this process's cgroup (a container's memory
limit, systemd's MemoryMax=) still allows, since the kernel kills a conversion that passes either.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from model_store.convert import cgroup_memory
from model_store.errors import InsufficientDiskError, InsufficientMemoryError

GIB = 1024**3
EXPORT_MEMORY_FACTOR = 1.3  # peak resident memory / weight bytes in the export dtype
EXPORT_MEMORY_OVERHEAD = 1 * GIB
DISK_MARGIN = 1 * GIB
COMPRESSED_FRACTION = {"int4": 0.4, "int8": 0.55, "fp16": 1.0, "fp32": 2.0}


@dataclass(frozen=True)
class Requirements:
    disk_bytes: int
    memory_bytes: int


def estimate(checkpoint_bytes: int, stored_bytes_per_param: int, precision: str, download_bytes: int) -> Requirements:
    """What converting a checkpoint of ``checkpoint_bytes`` needs, the download included."""
    parameters = checkpoint_bytes / max(stored_bytes_per_param, 1)
    export_bytes = parameters * (4 if precision == "fp32" else 2)
    output_bytes = parameters * 2 * COMPRESSED_FRACTION[precision]
    staging = export_bytes + (output_bytes if precision in ("int4", "int8") else 0)
    return Requirements(
        disk_bytes=int(download_bytes + staging + DISK_MARGIN),
        memory_bytes=int(export_bytes * EXPORT_MEMORY_FACTOR + EXPORT_MEMORY_OVERHEAD),
    )


def check(requirements: Requirements, store_root: Path, system_root: Path = Path("/")) -> None:
    """``system_root``: where ``/proc`` and ``/sys`` are read (cgroup_memory.tightest_limit)."""
    free = shutil.disk_usage(store_root).free
    if free < requirements.disk_bytes:
        raise InsufficientDiskError("disk", needed=requirements.disk_bytes, where=str(store_root), free=free)
    needed = requirements.memory_bytes
    host = psutil.virtual_memory().available
    group = cgroup_memory.tightest_limit(system_root) if needed else None
    if group is not None and group.available_bytes < min(host, needed):
        raise InsufficientMemoryError(
            "memory_limit",
            needed=needed,
            limit=group.limit_bytes,
            used=group.used_bytes,
            available=group.available_bytes,
        )
    if host < needed:
        raise InsufficientMemoryError("memory", needed=needed, available=host)
