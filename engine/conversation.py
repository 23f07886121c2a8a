"""Conversation state for OpenVINO GenAI, rebuilt from stored history so the KV cache is only ever a cache.

GenAI keeps, per ``ChatHistory`` object, which images belong to which message and which tokens are already
in the KV cache; with continuous batching and prefix caching those KV blocks survive while other chats are
answered, and its vision registry keeps encoded images, so a follow-up only pays for its new tokens.

The engine keeps one ``ChatHistory`` per conversation (least recently used ones are dropped).  When none
exists, or the stored history no longer extends what GenAI saw (a restart, /reset, a trimmed window), the
conversation is replayed: each earlier question that carried images is sent once with its own images, so
every image lands in the message it was sent with; the same happens when an earlier photo question was
answered in a batch, which does not go through this state.  The prompt is then exactly the one an
uninterrupted conversation would have produced, and a greedy answer does not depend on what happened to
the cache.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.images import PreparedImage

log = logging.getLogger(__name__)

Role = Literal["user", "assistant"]
Signature = tuple[str, str, tuple[str, ...]]


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str
    images: tuple[PreparedImage, ...] = ()

    @property
    def signature(self) -> Signature:
        return (self.role, self.text, tuple(image.sha256 for image in self.images))


@dataclass
class _Session:
    history: Any  # openvino_genai.ChatHistory
    known: list[Signature] = field(default_factory=list)


def _messages(system_prompt: str, turns: Sequence[Turn]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.extend({"role": turn.role, "content": turn.text} for turn in turns)
    return messages


def _signatures(system_prompt: str, turns: Sequence[Turn]) -> list[Signature]:
    head: list[Signature] = [("system", system_prompt, ())] if system_prompt else []
    return head + [turn.signature for turn in turns]


def tagged_messages(system_prompt: str, turns: Sequence[Turn]) -> tuple[list[dict[str, str]], list[PreparedImage]]:
    """The whole conversation as one request, for a batch (GenAI's ``add_request`` takes no chat state): each
    image becomes Phi-3-vision's ``<|image_N|>`` tag at the start of the message it came with, where GenAI's
    chat state puts it too, so both ways see the same prompt."""
    messages = _messages(system_prompt, turns)
    offset = 1 if system_prompt else 0
    images: list[PreparedImage] = []
    for index, turn in enumerate(turns):
        tags = "".join(f"<|image_{len(images) + number}|>\n" for number in range(1, len(turn.images) + 1))
        messages[offset + index]["content"] = tags + turn.text
        images.extend(turn.images)
    return messages, images


Generate = Callable[[Any, Sequence[PreparedImage], Any, Any], Any]


class Sessions:
    """Per-conversation GenAI chat state, bounded; lives in the model's process (engine/pipeline_host.py)."""

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._sessions: OrderedDict[Hashable, _Session] = OrderedDict()
        self.replays = 0

    def run(
        self,
        generate: Generate,
        key: Hashable,
        system_prompt: str,
        past: Sequence[Turn],
        question: Turn,
        config: Any,
        streamer: Any,
        prime_config: Any,
    ) -> Any:
        """Generate the answer to ``question`` given ``past``, reusing or rebuilding GenAI's chat state."""
        import openvino_genai as genai

        wanted = _signatures(system_prompt, [*past, question])
        session = self._sessions.pop(key, None)
        offset = 1 if system_prompt else 0
        if (
            session is None
            or wanted[: len(session.known)] != session.known
            # turns answered in a batch never passed through this state: their photos must be replayed
            or any(turn.images for turn in past[len(session.known) - offset :])
        ):
            session = _Session(history=genai.ChatHistory())
            for index, turn in enumerate(past):
                if turn.role == "user" and turn.images:
                    session.history.set_messages(_messages(system_prompt, past[: index + 1]))
                    generate(session.history, turn.images, prime_config, None)
                    self.replays += 1
            log.debug("rebuilt chat state for %s (%d messages)", key, len(past) + offset + 1)
        session.history.set_messages(_messages(system_prompt, [*past, question]))
        # On an exception the session is dropped: GenAI's state for it may be half-updated.
        result = generate(session.history, question.images, config, streamer)
        session.known = wanted
        self._sessions[key] = session
        while len(self._sessions) > self._capacity:
            self._sessions.popitem(last=False)
        return result
