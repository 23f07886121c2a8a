"""The look-up before /convert asks an admin to run a repository's code: the commits a conversion would read.

It waits for the Hub, so it runs in a thread; not one of asyncio's, whose threads the loop waits for when it
closes (a look-up stuck on the network would hold up the bot's exit), but a daemon thread of its own, which
the process leaves behind when it ends.  Every request is bounded (HUB_TIMEOUT_SECONDS), and so is the whole,
at twice that: a Hub that never answers is reported by the request that gave up, naming the repository, and
one that answers each request just in time still gets a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from bot.settings import Settings
from model_store.convert import hub, pins
from model_store.sources import ModelSource

WHOLE_LOOK_UP = 2  # times HUB_TIMEOUT_SECONDS


async def look_up(source: ModelSource, settings: Settings, stopping: asyncio.Event) -> pins.Pins | None:
    """The commits of ``source`` and of the repositories it names, or None if the bot stops first.  Raises
    ModelStoreError as the conversion would (an unknown repository, a Hub that does not answer a request within
    HUB_TIMEOUT_SECONDS, code loaded from another repository), and TimeoutError when the whole takes longer
    than ``WHOLE_LOOK_UP`` times that."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[pins.Pins] = loop.create_future()

    def deliver(outcome: Callable[[Any], None], value: object) -> None:
        def settle() -> None:
            if not answer.done():
                outcome(value)

        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle)

    def work() -> None:
        try:
            hub.limit_waits(settings.hub_timeout_seconds)
            found = pins.resolve(source, None, {}, settings.hub_token)
        except Exception as error:
            deliver(answer.set_exception, error)
        else:
            deliver(answer.set_result, found)

    threading.Thread(target=work, name="hub-look-up", daemon=True).start()
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait(
            {answer, stopped}, timeout=WHOLE_LOOK_UP * settings.hub_timeout_seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stopped.cancel()
    if answer.done():
        return answer.result()
    answer.cancel()
    if stopping.is_set():
        return None
    raise TimeoutError
