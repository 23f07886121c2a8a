"""What the bot's process and the model's process say to each other over their pipe (pickled dataclasses).

Images travel by content hash: a job names the images of its conversation, and carries the pixels only of
those the model's process does not hold yet (``NewImages``); the bot's side decides what it may drop
(``forget``), so both sides always agree on what is there.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.conversation import Message
from engine.generation import GenerationSettings

NewImages = dict[str, np.ndarray]  # sha256 -> H x W x 3 uint8 pixels
SPEECH_SAMPLE_RATE = 16000  # what Whisper's feature extractor takes


@dataclass(frozen=True)
class Speech:
    """A question asked aloud: float32 samples (little-endian bytes), mono, 16 kHz, as bot/media/sound.py makes
    them.  The model's process writes it down with the speech model and asks what it heard."""

    samples: bytes
    language: str | None = None  # as Whisper names it ("<|fr|>"); None: Whisper tells from the sound


@dataclass(frozen=True)
class Job:
    """Answer ``question`` after ``past``; ``batched`` jobs run together, the others alone (see FairQueue).
    With ``speech``, the question's text is what was heard, after the text it has (a caption)."""

    request_id: int
    key: Hashable
    past: tuple[Message, ...]
    question: Message
    settings: GenerationSettings
    batched: bool
    images: NewImages = field(default_factory=dict)
    forget: tuple[str, ...] = ()
    speech: Speech | None = None


@dataclass(frozen=True)
class Prepare:
    """Read ``past`` ahead of the conversation's next question, when nobody is waiting; a later Prepare or Job
    for the same conversation replaces it.  ``ahead``: ``past`` is the view the conversation will have after
    its coming step, read beside its current one; only a later Prepare of that view replaces it."""

    request_id: int
    key: Hashable
    past: tuple[Message, ...]
    settings: GenerationSettings
    images: NewImages = field(default_factory=dict)
    forget: tuple[str, ...] = ()
    ahead: bool = False


@dataclass(frozen=True)
class Cancel:
    request_id: int


@dataclass(frozen=True)
class Drop:
    """A conversation was reset: its chat state and any preparation for it go."""

    key: Hashable


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class Ready:
    load_seconds: float
    hears: bool = False  # a speech model is loaded beside the vision model


@dataclass(frozen=True)
class LoadFailed:
    """Why the model could not be loaded, as a ModelStoreError's reason and data (model_store/errors.py)."""

    reason: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Text:
    request_id: int
    text: str


@dataclass(frozen=True)
class Heard:
    """What a question asked aloud says, before its answer; ``text`` is empty when no words were made out (no
    answer follows then).  ``question``: the text the model answers (the question's own, then what was heard),
    as the conversation's history must keep it for the next question to find it read."""

    request_id: int
    text: str
    question: str
    language: str | None
    seconds: float


@dataclass(frozen=True)
class Report:
    """What the model's process measured of one answer; the engine hands it on to the bot unchanged
    (``engine.engine.Finished``)."""

    input_tokens: int = 0
    generated_tokens: int = 0
    question_tokens: int = 0  # what the question adds to the conversation, as the context policy counts
    replays: int = 0  # earlier photo messages read again, one call each, to rebuild GenAI's chat state
    vision_seconds: float = 0.0  # spent encoding images that were not encoded already
    waited_seconds: float = 0.0  # from reaching the model's process to starting: behind a piece read ahead


@dataclass(frozen=True)
class Done:
    """The end of a job or a preparation, whether it completed, was cancelled or replaced, or failed (``error``)."""

    request_id: int
    text: str = ""
    error: str | None = None
    report: Report = field(default_factory=Report)
    pieces: int = 0  # calls a preparation took


Command = Job | Prepare | Cancel | Drop | Shutdown
Reply = Ready | LoadFailed | Text | Heard | Done
