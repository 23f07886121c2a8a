"""Running a conversion in its own process.

A conversion holds gigabytes of torch and OpenVINO memory; in a child process the bot stays responsive and
gets every byte back when the child exits, and a crash or an out-of-memory kill of the child cannot take the
bot down.  Progress, the result and errors come back over a pipe as plain values, read as such.  The child
starts as every child of the bot does (model_store/child_start.py): it dies with the bot, sees none of its
secrets but the Hub token it is handed for downloads, and is confined to its source, the model store and
Hugging Face's caches; the repository's code runs in its export's process, confined further (export.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import pickle
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from model_store.child_process import in_thread_until_cancelled, stop_process
from model_store.child_start import OPENVINO_TELEMETRY, Confinement, new_child, receive
from model_store.convert.job import ConversionRequest, run_conversion
from model_store.errors import (
    ConversionFailedError,
    ConversionInterruptedError,
    ModelStoreError,
    error_from_kind,
)
from model_store.progress import Progress, ProgressCallback, ignore_progress
from model_store.sources import parse_source
from model_store.store import ModelEntry

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
STOP_SECONDS = 3.0  # a SIGTERM ends the child at once, or through its export's process (export.py), else SIGKILL


def _child_main(request: ConversionRequest, connection: Connection) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s conversion: %(message)s")
    try:
        entry = run_conversion(request, lambda p: connection.send(("progress", p.phase, p.percent, p.detail)))
        connection.send(("done", entry.slug, entry.precision, str(entry.path), entry.manifest))
    except ModelStoreError as error:
        connection.send(("error", error.kind, error.reason, error.data))
    except MemoryError:
        connection.send(("error", "memory", "conversion_out_of_memory", {}))
    except Exception as error:
        log.exception("conversion failed")
        connection.send(("error", "failed", "conversion_failed", {"error": f"{type(error).__name__}: {error}"}))
    finally:
        connection.close()


def _confinement(request: ConversionRequest) -> Confinement:
    """A conversion downloads, compresses and validates: it may read its source (a local checkpoint or IR) and
    OpenVINO's telemetry id, and write the model store, Hugging Face's caches, shared memory for semaphores and
    a temporary directory of its own; nothing else."""
    try:
        source = parse_source(request.source).local_dir
    except ModelStoreError:  # the child says what is wrong with it
        source = None
    return Confinement(
        readable=(*((str(source),) if source is not None else ()), OPENVINO_TELEMETRY),
        writable=(request.store_root, "/dev/shm"),  # noqa: S108 (where joblib, for NNCF, and torch make semaphores)
        network=True,
        private_temp=True,
        hugging_face=True,
    )


def convert_in_subprocess(
    request: ConversionRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: threading.Event | None = None,
) -> ModelEntry:
    """Block until the child finishes; ``cancel`` (or Ctrl-C) stops it, leaving the serving model as it was."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = new_child(_child_main, (request, sender), name="phi3bot-convert", confinement=_confinement(request))
    child.start()
    sender.close()
    outcome: tuple[Any, ...] | None = None
    try:
        while outcome is None:
            if cancel is not None and cancel.is_set():
                raise ConversionInterruptedError("cancelled")
            if receiver.poll(POLL_SECONDS):
                try:
                    message = receive(receiver)  # plain values only: the child ran a repository's code
                except EOFError:
                    child.join()
                    raise ConversionFailedError("conversion_ended", exitcode=child.exitcode) from None
                except (OSError, pickle.UnpicklingError) as error:
                    raise ConversionFailedError("not_an_answer", error=str(error)) from None
                if message[0] == "progress":
                    progress(Progress(phase=message[1], percent=message[2], detail=message[3]))
                else:
                    outcome = message
            elif not child.is_alive() and not receiver.poll(0):
                raise ConversionFailedError("conversion_ended", exitcode=child.exitcode)
    except KeyboardInterrupt:
        raise ConversionInterruptedError("interrupted") from None
    finally:
        if outcome is None:  # quickly: a bot stopping (SIGTERM) has seconds to exit, its conversion with it
            stop_process(child, grace=0, terminate_wait=STOP_SECONDS)
        child.join()
        receiver.close()
    if outcome[0] == "error":
        raise error_from_kind(outcome[1], outcome[2], outcome[3])
    return ModelEntry(slug=outcome[1], precision=outcome[2], path=Path(outcome[3]), manifest=outcome[4])


async def convert_async(request: ConversionRequest, progress: ProgressCallback = ignore_progress) -> ModelEntry:
    """The same, for the bot: progress is delivered on the event loop; cancelling the task stops the child."""
    loop = asyncio.get_running_loop()

    def on_progress(update: Progress) -> None:
        loop.call_soon_threadsafe(progress, update)

    call = functools.partial(convert_in_subprocess, request, on_progress)
    return await in_thread_until_cancelled(call, ConversionInterruptedError)
