"""`phi3bot ask` and `phi3bot chat`: the same engine in a terminal, for people who have no Telegram bot yet."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import TextIO

from bot import texts
from bot.media.decoding import ImageLimits, ImageRejected, prepare_image
from bot.running.background import Background
from bot.running.runtime import build_engine
from bot.settings import Settings
from engine.backend import Backend
from engine.conversation import Turn
from engine.conversation_memory import ConversationMemory
from engine.engine import Chunk, Finished, Waiting
from engine.images import PreparedImage

TERMINAL = ("terminal", 0)
DEFAULT_IMAGE_QUESTION = "Describe this image."
CHAT_HELP = "Commands: /image PATH (a photo to ask about; it is read while you type), /reset, /quit"

log = logging.getLogger(__name__)


def _load_image(path: Path) -> tuple[PreparedImage, ...]:
    path = path.expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"There is no image file at {path}.")
    return (prepare_image(path.read_bytes(), ImageLimits()),)


async def _answer(engine: Backend, past: list[Turn], question: Turn, out: TextIO) -> Finished:
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
    """The image is read first: a wrong path or a broken file is reported without waiting for the model."""
    images = await asyncio.to_thread(_load_image, image) if image else ()
    engine = await build_engine(settings)
    try:
        turn = Turn(role="user", text=question or DEFAULT_IMAGE_QUESTION, images=images)
        finished = await _answer(engine, [], turn, out)
        return 0 if finished.status == "complete" else 1
    finally:
        await engine.aclose()


async def chat(settings: Settings, image: Path | None, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    """A conversation under the same context policy as a Telegram chat; an image attached with /image is read
    by the model while the question is typed, as a photo sent alone to the bot is."""
    first = await asyncio.to_thread(_load_image, image) if image else ()
    engine = await build_engine(settings)
    memory = ConversationMemory(engine.history_tokens, settings.system_prompt, engine.num_crops)
    reading = Background(_reading_failed)

    def keep(images: tuple[PreparedImage, ...]) -> None:
        memory.add(Turn(role="user", text="", images=images))
        reading.start(engine.prepare(TERMINAL, memory.view()))

    if first:
        keep(first)
    out.write(f"Model: {engine.serving.source} ({engine.serving.precision}). {CHAT_HELP}\n")
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
                memory.clear()
                engine.forget(TERMINAL)
                out.write("History cleared.\n")
                continue
            if text.startswith("/image"):
                try:
                    keep(await asyncio.to_thread(_load_image, Path(text.removeprefix("/image").strip())))
                    out.write("Image attached; ask your question.\n")
                except (OSError, ImageRejected) as error:
                    why = texts.refusal(error.reason, error.data) if isinstance(error, ImageRejected) else error
                    out.write(f"Could not use that image: {why}\n")
                continue
            if not text:
                continue
            question = Turn(role="user", text=text)
            out.write("bot> ")
            finished = await _answer(engine, memory.view(), question, out)
            memory.record(question, finished)
    finally:
        await reading.aclose()
        await engine.aclose()


async def _reading_failed(_: object | None, error: Exception) -> None:
    """The model reads the image with the question instead; the log says why it could not before."""
    log.error("reading the image ahead failed", exc_info=error)
