"""Conversation state for OpenVINO GenAI, rebuilt from stored history so the KV cache is only ever a cache.

GenAI keeps, per ``ChatHistory`` object, which images belong to which message; its vision registry keeps an
encoded image while any chat state refers to it, and prefix caching keeps the KV blocks of what was read.
An image can only be attached to the last user message of a call, so a conversation with photos in earlier
messages is read message by message: each photo message ends a call of its own.

A ``Session`` records what GenAI has read for one conversation.  Reaching a wanted prompt is a sequence of
``Piece`` calls, each generating a single token: one per photo message, and (for work done ahead of a
question) text cut into pieces of a chosen number of tokens, a long message read in parts.  The caller runs
one piece at a time, so it can stop between pieces for a cancel, a time limit or another conversation's question.
When the conversation changed at its start (a step of the context policy, a restart), a new session is
built while the old one stays alive, so the photos it holds are found encoded in the vision registry.

The prompt built this way is the one an uninterrupted conversation would have produced, so a greedy answer
does not depend on what happened to the caches.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.images import PreparedImage
from engine.prompt_text import as_plain_text

log = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, with the images sent with it."""

    role: Role
    text: str
    images: tuple[PreparedImage, ...] = ()

    @property
    def message(self) -> Message:
        """What the model reads of this turn: its text can carry no template marker (engine/prompt_text.py)."""
        return Message(self.role, as_plain_text(self.text), tuple(image.sha256 for image in self.images))


@dataclass(frozen=True)
class Message:
    """A message as the model's process gets it: images by content hash (their pixels travel once)."""

    role: Role
    text: str
    images: tuple[str, ...] = ()

    def as_dict(self, text: str | None = None) -> dict[str, str]:
        return {"role": self.role, "content": self.text if text is None else text}


def conversation(system_prompt: str, messages: Sequence[Message]) -> list[Message]:
    """The messages of a prompt: the system prompt (if any) first."""
    return [Message("system", as_plain_text(system_prompt)), *messages] if system_prompt else list(messages)


def tagged_messages(messages: Sequence[Message]) -> tuple[list[dict[str, str]], list[str]]:
    """The whole conversation as one request, for a batch (GenAI's ``add_request`` takes no chat state): each
    image becomes Phi-3-vision's ``<|image_N|>`` tag at the start of the message it came with, where GenAI's
    chat state puts it too, so both ways see the same prompt."""
    images: list[str] = []
    tagged = []
    for message in messages:
        tags = "".join(f"<|image_{len(images) + number}|>\n" for number in range(1, len(message.images) + 1))
        tagged.append(message.as_dict(tags + message.text))
        images.extend(message.images)
    return tagged, images


class Tokens:
    """Counting and cutting text as the model's tokenizer does (an ``openvino_genai.Tokenizer``)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def ids(self, text: str) -> list[int]:
        if not text:
            return []
        return [int(token) for token in self._tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]

    def cut(self, text: str, tokens: int) -> str:
        return str(self._tokenizer.decode(self.ids(text)[:tokens]))


@dataclass
class Session:
    history: Any  # openvino_genai.ChatHistory
    known: list[Message] = field(default_factory=list)  # read whole, in order
    partial: int = 0  # tokens of the next message already read (a long message is read in parts)
    previous: Session | None = None  # kept alive while this one is built, so its encoded images are found again


@dataclass(frozen=True)
class Piece:
    """One call that reads more of a conversation: ``messages`` (the last one possibly cut short), with
    ``images`` attached to its last user message."""

    messages: list[dict[str, str]]
    images: tuple[str, ...]
    complete: int  # messages of the wanted prompt read whole after this call
    partial: int  # tokens of the next message read after this call
    tokens: int  # about how many tokens this call reads that were not read before


def _starts(wanted: Sequence[Message], session: Session) -> bool:
    """``wanted`` starts with what the session has read (GenAI can go on from there)."""
    return list(wanted[: len(session.known)]) == session.known


def _has_images(message: Message) -> bool:
    return message.role == "user" and bool(message.images)


class Sessions:
    """Per-conversation GenAI chat state, bounded; lives in the model's process (engine/pipeline_host.py).

    Beside each conversation's session there may be one for the view it will have after its coming step
    (engine/context_policy.py), read ahead; the step's question finds it and it becomes the conversation's.
    """

    def __init__(self, capacity: int = 16) -> None:  # each keeps its photos encoded; more rarely fit the KV cache
        self._capacity = capacity
        self._sessions: OrderedDict[Hashable, Session] = OrderedDict()
        self._ahead: OrderedDict[Hashable, Session] = OrderedDict()

    def session(self, key: Hashable, wanted: Sequence[Message]) -> Session:
        """The conversation's session, the one read ahead for it if that is where ``wanted`` starts, or a new one
        if neither has read what ``wanted`` starts with."""
        import openvino_genai as genai

        session = self._sessions.pop(key, None)
        if session is None or not _starts(wanted, session):
            if session is not None:
                session.previous = None  # one older state is kept alive, not a chain of them
            ahead = self._ahead.pop(key, None)
            if ahead is not None and _starts(wanted, ahead):
                ahead.previous = session
                session = ahead
                log.debug("the step of %s was read ahead", key)
            else:
                session = Session(genai.ChatHistory(), previous=session)
                log.debug("rebuilding chat state for %s", key)
        self._sessions[key] = session
        while len(self._sessions) > self._capacity:
            evicted, _ = self._sessions.popitem(last=False)
            self._ahead.pop(evicted, None)
        return session

    def ahead(self, key: Hashable, wanted: Sequence[Message]) -> Session:
        """The session of the conversation's view after its coming step, kept beside its current one."""
        import openvino_genai as genai

        session = self._ahead.pop(key, None)
        if session is None or not _starts(wanted, session):
            session = Session(genai.ChatHistory())
        self._ahead[key] = session
        while len(self._ahead) > self._capacity:
            self._ahead.popitem(last=False)
        return session

    def holds(self, key: Hashable, wanted: Sequence[Message], *, ahead: bool = False) -> bool:
        """GenAI has read ``wanted`` whole already, or more of the same conversation (a later question)."""
        session = (self._ahead if ahead else self._sessions).get(key)
        return (
            session is not None and session.known[: len(wanted)] == list(wanted) and len(session.known) >= len(wanted)
        )

    def forget(self, key: Hashable, *, ahead: bool = False) -> None:
        """On an error GenAI's state for the conversation may be half-updated: it is read again next time (only
        the view after its step, for an error reading that)."""
        if not ahead:
            self._sessions.pop(key, None)
        self._ahead.pop(key, None)

    @staticmethod
    def next_piece(
        session: Session,
        wanted: Sequence[Message],
        piece_tokens: int | None,
        count: Callable[[str], int],
        cut: Callable[[str, int], str],
    ) -> Piece | None:
        """The next call towards ``wanted``, or None when what is left can go with the question.

        With ``piece_tokens`` None (a question is waiting) only photo messages get calls of their own, since
        GenAI attaches images to the last user message only.  Otherwise text is read too, in calls of about
        ``piece_tokens`` tokens: such work is done ahead of a question, and each piece is the longest another
        conversation's question may have to wait.
        """
        start = len(session.known)
        if start >= len(wanted):
            return None
        head = [message.as_dict() for message in wanted[:start]]
        if piece_tokens is None:
            photo = next((i for i in range(start, len(wanted)) if _has_images(wanted[i])), None)
            if photo is None:
                return None
            head += [message.as_dict() for message in wanted[start : photo + 1]]
            return Piece(head, wanted[photo].images, photo + 1, 0, 0)
        lead = start
        while lead < len(wanted) - 1 and wanted[lead].role == "system":  # a call needs a user message
            lead += 1
        if _has_images(wanted[lead]):
            head += [message.as_dict() for message in wanted[start : lead + 1]]
            return Piece(head, wanted[lead].images, lead + 1, 0, 0)
        room, partial, index = piece_tokens, session.partial, start
        while index < len(wanted) and room > 0 and not _has_images(wanted[index]):
            if wanted[index].role == "system":  # never cut: GenAI wants a user message in every call
                head.append(wanted[index].as_dict())
                index += 1
                continue
            length = count(wanted[index].text)
            if length - partial > room:
                text = cut(wanted[index].text, partial + room)
                return Piece([*head, wanted[index].as_dict(text)], (), index, partial + room, piece_tokens)
            room -= length - partial
            head.append(wanted[index].as_dict())
            partial, index = 0, index + 1
        return Piece(head, (), index, 0, piece_tokens - room)

    @staticmethod
    def advance(session: Session, wanted: Sequence[Message], piece: Piece) -> None:
        session.known = list(wanted[: piece.complete])
        session.partial = piece.partial
        if piece.complete == len(wanted):
            session.previous = None

    @staticmethod
    def answered(session: Session, messages: Sequence[Message]) -> None:
        """GenAI has read ``messages`` whole (a question was answered after them)."""
        session.known = list(messages)
        session.partial = 0
        session.previous = None
