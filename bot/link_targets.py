"""Links in an answer show where they go.

The model writes Markdown, and ``[your bank](https://…)`` would become a ``text_link`` entity whose address
Telegram hides behind the words; a photo or a PDF can ask the model to write one, under the bot's name.  So a
link whose words are not its address gets the address written after them, and only web and mail addresses
stay links at all: ``tg://`` (which can open chats or act in the app), ``javascript:`` and every other scheme
keep their words and lose the link.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from telegramify_markdown.entity import MessageEntity, utf16_len

SHOWN_SCHEMES = frozenset({"http", "https", "mailto"})
HIDDEN_TARGETS = frozenset({"text_link", "custom_emoji"})  # custom emoji come from tg://emoji links


def _index(text: str, units: int) -> int:
    """The index in ``text`` of the character that starts at UTF-16 offset ``units``."""
    counted = 0
    for index, character in enumerate(text):
        if counted >= units:
            return index
        counted += 2 if ord(character) > 0xFFFF else 1
    return len(text)


def _scheme(url: str) -> str:
    try:
        return urlsplit(url.strip()).scheme.lower()
    except ValueError:
        return ""


def show_link_targets(text: str, entities: list[MessageEntity]) -> tuple[str, list[MessageEntity]]:
    """``text`` and ``entities`` with no address hidden: links whose words are their address stay links; other
    web links become their words followed by `` (address)``, the address a visible link; the rest plain words."""
    shown = [entity for entity in entities if entity.type not in HIDDEN_TARGETS]
    links = [entity for entity in entities if entity.type == "text_link" and _scheme(entity.url or "") in SHOWN_SCHEMES]
    for link in sorted(links, key=lambda entity: entity.offset + entity.length, reverse=True):
        url = (link.url or "").strip()
        end = link.offset + link.length
        start_index, end_index = _index(text, link.offset), _index(text, end)
        if text[start_index:end_index].strip() == url:
            shown.append(link)
            continue
        added = f" ({url})"
        text = text[:end_index] + added + text[end_index:]
        grown = utf16_len(added)
        for entity in shown:
            if entity.offset >= end:
                entity.offset += grown
            elif entity.offset + entity.length > end:
                entity.length += grown
        if _scheme(url) != "mailto":
            shown.append(MessageEntity(type="url", offset=end + 2, length=utf16_len(url)))
    return text, sorted(shown, key=lambda entity: (entity.offset, -entity.length))
