"""Which part of a long conversation the model sees: a token budget, cut in large steps, the latest photo kept.

Why steps: prefix caching and GenAI's chat state make a follow-up cheap only while the prompt starts the same
way as the previous one.  A window that slides by one message per turn changes the prompt's start at every
turn, so each follow-up reads the whole conversation again.  Here the view keeps its start until the history
outgrows ``budget`` tokens, then drops the oldest exchanges at once until at most half the budget is left;
the prompt's prefix changes once per step, and that step can be prepared before the next question comes.

Why a pinned photo: people keep asking about the photo they sent long after its turn would have been
dropped.  At each step the latest exchange that carries images (a question with its photo or album, and its
answer) stays in view, right after the system prompt, until a later step finds a newer photo or the
conversation is reset.  Earlier photos leave with their exchanges.  Between steps nothing moves, so a new
photo joins the view while the pinned one stays until the next step.

The policy only reads counts and ids; where the counts come from (the model's tokenizer, an estimate for old
messages) and where the window is stored (SQLite for the bot, memory for the terminal) is the caller's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MESSAGE_OVERHEAD = 4  # <|user|>, a newline, <|end|>, a newline around every message in Phi-3's chat template


class Counted(Protocol):
    """A stored message as the policy sees it: ids grow with time."""

    @property
    def id(self) -> int: ...

    @property
    def role(self) -> str: ...

    @property
    def tokens(self) -> int: ...

    @property
    def has_images(self) -> bool: ...


@dataclass(frozen=True)
class Window:
    """Where the model's view of a conversation starts (a message id, None = from its first message) and which
    exchange is pinned before that start (the id of its first message, None = none)."""

    start: int | None = None
    pin: int | None = None


def estimate_tokens(text: str, image_tokens: Sequence[int] = ()) -> int:
    """An upper-leaning estimate for messages the tokenizer has not counted (stored before counts were kept):
    Phi-3's tokenizer takes about four characters of English per token, and no token is shorter than a byte
    in three."""
    return math.ceil(len(text.encode("utf-8")) / 3) + sum(image_tokens) + MESSAGE_OVERHEAD


def exchanges(messages: Sequence[Counted]) -> list[list[Counted]]:
    """Messages grouped as asked and answered: a run of user messages (a photo sent alone, then the question
    about it) and the answers that follow, up to the next user message."""
    groups: list[list[Counted]] = []
    for message in messages:
        if not groups or (message.role == "user" and groups[-1][-1].role != "user"):
            groups.append([message])
        else:
            groups[-1].append(message)
    return groups


def _pinned(messages: Sequence[Counted], window: Window) -> list[Counted]:
    if window.pin is None or (window.start is not None and window.pin >= window.start):
        return []
    for group in exchanges([m for m in messages if window.start is None or m.id < window.start]):
        if group[0].id == window.pin:
            return group
    return []


def in_view(messages: Sequence[Counted], window: Window) -> list[Counted]:
    """The messages the model sees, oldest first: the pinned exchange, then everything from the start.

    ``messages`` must hold at least every message from the pinned exchange on (more is fine).
    """
    shown = [m for m in messages if window.start is None or m.id >= window.start]
    return [*_pinned(messages, window), *shown]


def _tokens(messages: Sequence[Counted]) -> int:
    return sum(message.tokens for message in messages)


def fit(messages: Sequence[Counted], window: Window, budget: int, system_tokens: int = 0) -> Window:
    """The window for the next question: ``window`` itself while the view fits ``budget``; otherwise a step.

    A step drops the oldest exchanges until the view holds at most half the budget, but never the latest
    exchange, and pins the latest exchange with images if it would otherwise leave the view.
    """
    view = in_view(messages, window)
    if system_tokens + _tokens(view) <= budget:
        return window
    pinned = _pinned(messages, window)
    groups = exchanges([m for m in messages if window.start is None or m.id >= window.start])
    with_images = [group for group in [pinned, *groups] if any(m.has_images for m in group)]
    latest_photo = with_images[-1] if with_images else None
    for keep_from in range(1, len(groups)):
        kept = [m for group in groups[keep_from:] for m in group]
        start = kept[0].id
        pin = latest_photo if latest_photo is not None and latest_photo[0].id < start else None
        if keep_from == len(groups) - 1 or system_tokens + _tokens(pin or []) + _tokens(kept) <= budget // 2:
            return Window(start, pin[0].id if pin else None)
    return window  # a single exchange: nothing can be dropped


FALLBACK_KV_CACHE_GB = 4.0  # KV_CACHE_GB=0 lets the cache grow; the budget still needs a size to share


def kv_cache_tokens(config: Mapping[str, Any], *, kv_cache_gb: float, device: str) -> int:
    """How many tokens' keys and values the KV cache holds: two values per layer, KV head and head dimension,
    one byte each as the CPU plugin keeps them (u8) by default, two (f16) on other devices."""
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_size = int(config["hidden_size"]) // heads
    per_token = 2 * int(config["num_hidden_layers"]) * kv_heads * head_size * (1 if device == "CPU" else 2)
    return int((kv_cache_gb or FALLBACK_KV_CACHE_GB) * 2**30 / per_token)


def default_history_tokens(config: Mapping[str, Any], *, kv_tokens: int, batch_size: int, max_new_tokens: int) -> int:
    """The budget when none is configured: a full batch of conversations, each with its history and answer,
    fits in the KV cache at once, and never more than the model's context."""
    context = int(config.get("max_position_embeddings", 4096))
    return max(MESSAGE_OVERHEAD, min(context, kv_tokens // max(1, batch_size)) - max_new_tokens)
