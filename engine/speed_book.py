"""Measured speeds kept across restarts, per model, precision, device, CPU and CPU settings.

Why: a new model process has measured nothing, so without a record the longest waits (the first photo after a
start, a conversation read again after a restart) are exactly the ones shown without a number.  What a model
measured on this machine holds for the next process of the same model on the same CPU with the same settings;
anything else (another model, precision, CPU or thread count) starts from nothing, as its speeds differ.

The book is a small JSON file beside the bot's other data, written whole and renamed so a crash never leaves
half of it; a missing or damaged book is an empty one.  It keeps the latest ``KEPT`` records.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.estimates import Speed

log = logging.getLogger(__name__)

KEPT = 16  # records, newest first: models and machines tried lately
# The instructions OpenVINO's CPU kernels choose between: a machine that masks one of them is another machine.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_identity() -> str:
    """This CPU as far as speed goes: its model name, the kernel-relevant instructions, the cores at hand."""
    name, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            field, _, value = line.partition(":")
            if field.strip() == "model name":
                name = value.strip()
            elif field.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return " ".join([name, *(flag for flag in KERNEL_FLAGS if flag in flags), f"{cores} cores"])


class SpeedBook:
    """The file of measured speeds; ``key`` names a model on a machine (``speed_key``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, key: str) -> tuple[Speed, float | None]:
        """Blocking (a small file): the speed measured for ``key``, and how long its model took to load."""
        record = self._records().get(key)
        if not isinstance(record, dict):
            return Speed(), None
        try:
            load = record.get("load_seconds")
            return Speed.restored(record["speed"]), float(load) if load is not None else None
        except (KeyError, TypeError, ValueError) as error:
            log.warning("ignoring a damaged speed record in %s: %s", self.path, error)
            return Speed(), None

    def write(self, key: str, speed: Mapping[str, Any], load_seconds: float | None) -> None:
        """Blocking: the record for ``key`` (``Speed.saved``) replaced, the oldest dropped beyond ``KEPT``."""
        records: dict[str, Any] = {key: {"speed": speed, "load_seconds": load_seconds, "saved": time.time()}}
        others = [(other, record) for other, record in self._records().items() if isinstance(record, dict)]
        for other, record in sorted(others, key=lambda item: -_number(item[1].get("saved"))):
            if other != key and len(records) < KEPT:
                records[other] = record
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(records), encoding="utf-8")
            partial.replace(self.path)
        except OSError as error:  # a full disk: the speeds are measured again next time
            log.warning("could not keep the measured speeds in %s: %s", self.path, error)

    def _records(self) -> Mapping[str, Any]:
        try:
            records = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            log.warning("ignoring the damaged speed book %s: %s", self.path, error)
            return {}
        return records if isinstance(records, dict) else {}


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def speed_key(source: str, precision: str, device: str, properties: Mapping[str, Any]) -> str:
    """A model on this machine: what it is, where it runs, and the CPU options it was compiled with."""
    options = ",".join(f"{name}={value}" for name, value in sorted(properties.items()))
    return f"{source} | {precision} | {device} | {cpu_identity()} | {options}"
