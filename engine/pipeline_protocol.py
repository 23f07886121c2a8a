"""What the bot's process and the model's process say to each other over their pipe (pickled dataclasses)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from engine.conversation import Turn
from engine.generation import GenerationSettings


@dataclass(frozen=True)
class Job:
    """Answer ``question`` after ``past``; ``batched`` jobs run together, the others alone (see FairQueue)."""

    request_id: int
    key: Hashable
    past: tuple[Turn, ...]
    question: Turn
    settings: GenerationSettings
    batched: bool


@dataclass(frozen=True)
class Cancel:
    request_id: int


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class Ready:
    load_seconds: float


@dataclass(frozen=True)
class LoadFailed:
    message: str


@dataclass(frozen=True)
class Text:
    request_id: int
    text: str


@dataclass(frozen=True)
class Done:
    """The end of a job, whether it completed, was cancelled or failed (``error``)."""

    request_id: int
    text: str = ""
    error: str | None = None
    input_tokens: int = 0
    generated_tokens: int = 0
    replays: int = 0  # earlier photo questions sent again to rebuild GenAI's chat state


Command = Job | Cancel | Shutdown
Reply = Ready | LoadFailed | Text | Done
