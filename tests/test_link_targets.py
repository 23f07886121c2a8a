"""Answers show where their links go: no address hidden behind words, no ``tg://`` or ``javascript:`` link."""

from __future__ import annotations

import pytest
from telegram import MessageEntity

from bot.output.formatting import FormattedPart, formatted_parts


def _units(part: FormattedPart, entity: MessageEntity) -> str:
    encoded = part.text.encode("utf-16-le")
    return encoded[2 * entity.offset : 2 * (entity.offset + entity.length)].decode("utf-16-le")


def _check(part: FormattedPart) -> None:
    """Every link's words are its address; every entity lies inside the text."""
    for entity in part.entities:
        assert entity.offset >= 0 and entity.offset + entity.length <= len(part.text.encode("utf-16-le")) // 2
        if entity.type == MessageEntity.TEXT_LINK:
            assert _units(part, entity).strip() == entity.url
        assert entity.type != MessageEntity.CUSTOM_EMOJI


@pytest.mark.parametrize(
    ("markdown", "text", "linked"),
    [
        (
            "Log in at [your bank](https://evil.example/login) now.",
            "Log in at your bank (https://evil.example/login) now.",
            ["https://evil.example/login"],
        ),
        (
            "[https://bank.example](https://evil.example)",
            "https://bank.example (https://evil.example)",
            ["https://evil.example"],
        ),
        ("See <https://docs.example/a>.", "See https://docs.example/a.", ["https://docs.example/a"]),
        (
            "**Bold [é😀](http://u.example) end** 😀 after",
            "Bold é😀 (http://u.example) end 😀 after",
            ["http://u.example"],
        ),
        ("Write to [us](mailto:help@example.org).", "Write to us (mailto:help@example.org).", []),
        ("[Open](tg://resolve?domain=somebot&start=x) it", "Open it", []),
        ("[Click](javascript:alert(1)) here", "Click here", []),
        ("![a picture](javascript:alert(1))", None, []),
        ("[file](file:///etc/passwd) and [data](data:text/html,x)", "file and data", []),
        ("![emoji](tg://emoji?id=5368324170671202286)", None, []),
    ],
)
def test_links_show_their_address(markdown: str, text: str | None, linked: list[str]) -> None:
    [part] = formatted_parts(markdown)
    _check(part)
    if text is not None:
        assert part.text == text
    shown = [_units(part, e) for e in part.entities if e.type in (MessageEntity.URL, MessageEntity.TEXT_LINK)]
    assert shown == linked
    assert "tg://" not in str([e.to_dict() for e in part.entities]) and "javascript" not in str(part.entities)


def test_formatting_around_a_link_covers_its_address() -> None:
    [part] = formatted_parts("**see [this](https://a.example/x) too** and `code`")
    bold = next(e for e in part.entities if e.type == MessageEntity.BOLD)
    code = next(e for e in part.entities if e.type == MessageEntity.CODE)
    assert _units(part, bold) == "see this (https://a.example/x) too"
    assert _units(part, code) == "code"


def test_a_long_answer_full_of_links_is_split_with_every_address_shown() -> None:
    line = "Item {n}: [the page](https://site.example/{n}) and [more](tg://resolve?domain=x{n}).\n"
    parts = formatted_parts("".join(line.format(n=n) for n in range(400)), limit=1000)
    assert len(parts) > 5
    for part in parts:
        _check(part)
    text = "".join(part.text for part in parts)
    assert all(f"the page (https://site.example/{n})" in text for n in range(400))
    assert "tg://" not in text and all("tg://" not in str(e.to_dict()) for p in parts for e in p.entities)
