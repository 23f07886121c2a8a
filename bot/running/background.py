"""Work the bot starts that no handler awaits (an album's question, the model reading conversations ahead, a
conversion and its progress) has one owner: each failure is reported where a handler's would be, and whatever
still runs at shutdown is cancelled and awaited before what it uses (the model, the history) is closed.

Not python-telegram-bot's ``Application.create_task``: ``Application.stop`` awaits those tasks without
cancelling them, so a warm-up or a conversion would hold the shutdown for as long as it runs, and tasks created
while the application is not running (the warm-up right after a start, before ``Application.start``) are not
tracked at all.  Failures take the same path as that method's: ``Application.process_error``, the error handler
registered in bot/app.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

Report = Callable[[object | None, Exception], Awaitable[object]]  # Application.process_error(update, error)


class Background:
    def __init__(self, report: Report) -> None:
        self._report = report
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(self, work: Coroutine[Any, Any, object], update: object | None = None) -> asyncio.Task[None]:
        """``update``: the one the work answers, if any, which the report is given (the error handler tells its
        sender that something went wrong).  Cancelling the task cancels the work."""
        task = asyncio.create_task(self._run(work, update))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: work.close())  # one cancelled before it began is not left unawaited
        return task

    async def _run(self, work: Coroutine[Any, Any, object], update: object | None) -> None:
        if self._closed:  # started at shutdown (an album's parts gathered as the bot stopped): it never runs
            return
        try:
            await work
        except Exception as error:
            await self._report(update, error)

    async def aclose(self) -> None:
        """Cancels and awaits whatever still runs; work started from now on never runs."""
        self._closed = True
        running = list(self._tasks)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
