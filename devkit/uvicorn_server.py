"""An ASGI app served over real HTTP on 127.0.0.1 for a test or a benchmark, on the caller's event loop: the
model service's clients are tested through the same sockets and streams they meet in production."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn


@asynccontextmanager
async def serving(app: Any, port: int = 0) -> AsyncIterator[str]:
    """Yields the server's address (``http://127.0.0.1:PORT``; port 0: any free one)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # uvicorn sets a flag, no event
            if task.done():
                task.result()  # it could not start: its error
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
