"""`phi3bot ask` and `phi3bot chat`: the same engine in a terminal, for people who have no Telegram bot yet."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TextIO

from bot.runtime import build_engine
from bot.settings import Settings
from engine.conversation import Turn
from engine.engine import Chunk, Engine, Finished, Waiting
from engine.images import ImageLimits, ImageRejected, PreparedImage, prepare_image

TERMINAL = ("terminal", 0)
DEFAULT_IMAGE_QUESTION = "Describe this image."
CHAT_HELP = "Commands: /image PATH (attach a photo to your next question), /reset, /quit"


def _load_image(path: Path) -> tuple[PreparedImage, ...]:
    return (prepare_image(path.expanduser().read_bytes(), ImageLimits()),)


async def _answer(engine: Engine, past: list[Turn], question: Turn, out: TextIO) -> Finished:
    finished: Finished | None = None
    async for event in engine.ask(TERMINAL, past, question):
        if isinstance(event, Waiting):
            out.write(f"(waiting, #{event.position} in line)\n")
        elif isinstance(event, Chunk):
            out.write(event.text)
            out.flush()
        elif isinstance(event, Finished):
            finished = event
    out.write("\n")
    assert finished is not None
    if finished.status != "complete":
        out.write(f"[{finished.status}{': ' + finished.error if finished.error else ''}]\n")
    return finished


async def ask_once(settings: Settings, image: Path | None, question: str, out: TextIO = sys.stdout) -> int:
    engine = await build_engine(settings)
    try:
        images = await asyncio.to_thread(_load_image, image) if image else ()
        turn = Turn(role="user", text=question or DEFAULT_IMAGE_QUESTION, images=images)
        finished = await _answer(engine, [], turn, out)
        return 0 if finished.status == "complete" else 1
    finally:
        await engine.aclose()


async def chat(settings: Settings, image: Path | None, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    engine = await build_engine(settings)
    past: list[Turn] = []
    pending = await asyncio.to_thread(_load_image, image) if image else ()
    out.write(f"Model: {engine.model.entry.source} ({engine.model.entry.precision}). {CHAT_HELP}\n")
    try:
        while True:
            out.write("you> ")
            out.flush()
            line = await asyncio.to_thread(stdin.readline)
            if not line:
                return 0
            text = line.strip()
            if text in ("/quit", "/exit"):
                return 0
            if text == "/reset":
                past.clear()
                out.write("History cleared.\n")
                continue
            if text.startswith("/image"):
                try:
                    pending = await asyncio.to_thread(_load_image, Path(text.removeprefix("/image").strip()))
                    out.write("Image attached; ask your question.\n")
                except (OSError, ImageRejected) as error:
                    out.write(f"Could not use that image: {error}\n")
                continue
            if not text and not pending:
                continue
            question = Turn(role="user", text=text or DEFAULT_IMAGE_QUESTION, images=pending)
            pending = ()
            out.write("bot> ")
            finished = await _answer(engine, past, question, out)
            past.extend([question, Turn(role="assistant", text=finished.text)])
    finally:
        await engine.aclose()
