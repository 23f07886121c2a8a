"""Model output to Telegram text that always sends.

The model writes Markdown (and sometimes HTML or stray asterisks).  Telegram's parse modes reject a
message with one unbalanced character, so the final answer is converted to plain text plus entities by
telegramify-markdown: nothing to escape, nothing to fail, and no link hides its address (bot/output/link_targets.py).
Offsets and lengths are UTF-16 code units, Telegram's unit, and long answers are split at line boundaries
below the 4096-unit limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import telegramify_markdown
from telegram import MessageEntity

from bot.output.link_targets import show_link_targets

log = logging.getLogger(__name__)

TELEGRAM_TEXT_LIMIT = 4096


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class FormattedPart:
    text: str
    entities: tuple[MessageEntity, ...] = ()


def _plain_parts(text: str, limit: int) -> list[FormattedPart]:
    """Split at line ends, then spaces, then anywhere, never inside a UTF-16 surrogate pair."""
    parts: list[FormattedPart] = []
    rest = text
    while utf16_len(rest) > limit:
        cut = len(rest)
        while utf16_len(rest[:cut]) > limit:
            cut = cut * limit // max(utf16_len(rest[:cut]), 1) if cut > limit else cut - 1
        window = rest[:cut]
        for separator in ("\n", " "):
            position = window.rfind(separator)
            if position > cut // 2:
                cut = position + 1
                break
        parts.append(FormattedPart(rest[:cut].rstrip() or rest[:cut]))
        rest = rest[cut:]
    if rest.strip():
        parts.append(FormattedPart(rest))
    return parts or [FormattedPart(text or "…")]


def headed(header: str, part: FormattedPart) -> FormattedPart:
    """``part`` with plain ``header`` before it, its entities moved along."""
    shift = utf16_len(header)
    moved = (MessageEntity.de_json({**e.to_dict(), "offset": e.offset + shift}, None) for e in part.entities)
    return FormattedPart(header + part.text, tuple(entity for entity in moved if entity is not None))


def plain_parts(text: str, limit: int = TELEGRAM_TEXT_LIMIT) -> list[FormattedPart]:
    """For streaming edits: no formatting, only a safe split."""
    return _plain_parts(text, limit)


def formatted_parts(markdown: str, limit: int = TELEGRAM_TEXT_LIMIT) -> list[FormattedPart]:
    """The final answer: Markdown rendered as entities, split to fit; plain text if conversion fails."""
    try:
        text, entities = show_link_targets(*telegramify_markdown.convert(markdown))
        chunks = telegramify_markdown.split_entities(text, entities, limit)
    except Exception:  # a formatter bug must never cost the user the answer
        log.warning("markdown conversion failed; sending plain text", exc_info=True)
        return _plain_parts(markdown, limit)
    parts = [
        FormattedPart(chunk, tuple(MessageEntity.de_json(entity.to_dict(), None) for entity in chunk_entities))
        for chunk, chunk_entities in chunks
        if chunk.strip()
    ]
    return parts or _plain_parts(markdown, limit)
