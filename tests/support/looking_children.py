"""``phi3bot`` whose ``models`` command starts three children the way the bot starts its own and prints, as one
JSON line, what each found: a file reader, a conversion (its ``run_conversion`` replaced, in the child too, as
this module is the children's main module) and an unconfined child, as the model's process is.  Otherwise the
real command: the children's parent went through the bot's own start-up (bot/terminal/cli.py's ``main``).

Each child looks at its environment (as Python has it and as the kernel shows it), at its parent's, and tries
to read ``.env`` and the history database by their absolute paths.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import multiprocessing
import os
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import bot.terminal.cli
import model_store.convert.process
from bot.media.reader import MediaReader
from bot.settings import Settings
from model_store.child_start import new_child
from model_store.convert import ConversionRequest, convert_in_subprocess
from model_store.errors import ModelStoreError
from model_store.progress import ProgressCallback
from model_store.store import ModelEntry

PR_GET_DUMPABLE = 3
CHECKPOINT = "checkpoint"  # an empty directory in the working directory, the conversion's source


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError as error:
        return type(error).__name__


def look(parent: int, files: list[str]) -> dict[str, Any]:
    return {
        "environ": dict(os.environ),
        "own_block": _read(Path("/proc/self/environ")),
        "parent_block": _read(Path(f"/proc/{parent}/environ")),
        "files": {name: _read(Path(name)) for name in files},
    }


def _files(store: Path) -> list[str]:
    """``.env`` where the bot runs, and the history database beside the model store (DATA_DIR's default)."""
    return [str(Path.cwd() / ".env"), str(store.parent / "history.sqlite3")]


def _conversion_looks(request: ConversionRequest, progress: ProgressCallback) -> ModelEntry:
    """In the conversion's child, instead of converting: what it found, as the error it reports."""
    raise ModelStoreError("looked", found=look(os.getppid(), _files(Path(request.store_root))))


def _look_and_send(sender: Connection, parent: int, files: list[str]) -> None:
    sender.send(look(parent, files))


async def _children_look(request: ConversionRequest) -> int:
    files = _files(Path(request.store_root))
    found: dict[str, Any] = {"dumpable": ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)}
    found["reader"] = await MediaReader().run(look, os.getpid(), files)
    try:
        await asyncio.to_thread(convert_in_subprocess, request)
    except ModelStoreError as error:
        found["conversion"] = error.data["found"]
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = new_child(_look_and_send, (sender, os.getpid(), files), name="phi3bot-model")
    child.start()
    sender.close()
    found["unconfined"] = receiver.recv()
    child.join()
    print(json.dumps(found))
    return 0


model_store.convert.process.run_conversion = _conversion_looks  # type: ignore[assignment]


def _models(settings: Settings) -> int:
    request = ConversionRequest(source=str(Path(CHECKPOINT).resolve()), store_root=str(settings.store_dir.resolve()))
    return asyncio.run(_children_look(request))


bot.terminal.cli._models = _models

if __name__ == "__main__":
    sys.exit(bot.terminal.cli.main())
