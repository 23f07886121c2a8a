"""Links in an answer show where they go.

The model writes Markdown, and ``[your bank](https://…)`` would become a ``text_link`` entity whose address
Telegram hides behind the words; a photo or a PDF can ask the model to write one, under the bot's name.  So a
link whose words are not its address gets the address written after them, and only web and mail addresses
stay links at all: ``tg://`` (which can open chats or act in the app), ``javascript:`` and every other scheme
keep their words and lose the link.
"""

from __future__ import annotations

import bisect
import itertools
from urllib.parse import urlsplit

from telegramify_markdown.entity import MessageEntity, utf16_len

SHOWN_SCHEMES = frozenset({"http", "https", "mailto"})
HIDDEN_TARGETS = frozenset({"text_link", "custom_emoji"})  # custom emoji come from tg://emoji links


def _utf16_starts(text: str) -> list[int]:
    """The UTF-16 offset at which each character of ``text`` starts, and its end as the last entry."""
    starts = [0]
    for character in text:
        starts.append(starts[-1] + (2 if ord(character) > 0xFFFF else 1))
    return starts


def _scheme(url: str) -> str:
    try:
        return urlsplit(url.strip()).scheme.lower()
    except ValueError:
        return ""


def show_link_targets(text: str, entities: list[MessageEntity]) -> tuple[str, list[MessageEntity]]:
    """``text`` and ``entities`` with no address hidden: links whose words are their address stay links; other
    web links become their words followed by `` (address)``, the address a visible link; the rest plain words.
    One pass over the text, however many links the model wrote."""
    starts = _utf16_starts(text)
    index = {offset: position for position, offset in enumerate(starts)}
    shown = [entity for entity in entities if entity.type not in HIDDEN_TARGETS]
    added: list[tuple[int, str]] = []  # (UTF-16 offset in ``text``, what is written there), in order
    for link in sorted(entities, key=lambda entity: entity.offset):
        url = (link.url or "").strip()
        if link.type != "text_link" or _scheme(url) not in SHOWN_SCHEMES:
            continue
        end = link.offset + link.length
        if text[index[link.offset] : index[end]].strip() == url:
            shown.append(link)
        else:
            added.append((end, f" ({url})"))
    points = [point for point, _ in added]
    grown = list(itertools.accumulate((utf16_len(words) for _, words in added), initial=0))
    for entity in shown:  # after each insertion point it starts at, longer by those strictly inside it
        before = grown[bisect.bisect_right(points, entity.offset)]
        inside = grown[bisect.bisect_left(points, entity.offset + entity.length)] - before
        entity.offset += before
        entity.length += inside
    pieces, taken = [], 0
    for number, (point, words) in enumerate(added):
        pieces += [text[taken : index[point]], words]
        taken = index[point]
        url = words[2:-1]
        if _scheme(url) != "mailto":
            shown.append(MessageEntity(type="url", offset=point + grown[number] + 2, length=utf16_len(url)))
    pieces.append(text[taken:])
    return "".join(pieces), sorted(shown, key=lambda entity: (entity.offset, -entity.length))
