"""Which part of a long conversation the model sees: a token budget, cut in large steps, the latest photo kept.

Why steps: prefix caching and GenAI's chat state make a follow-up cheap only while the prompt starts the same
way as the previous one.  A window that slides by one message per turn changes the prompt's start at every
turn, so each follow-up reads the whole conversation again.  Here the view keeps its start until the history
outgrows ``budget`` tokens, then drops the oldest exchanges at once, down to about half the budget; the
prompt's prefix changes once per step.

Why the step is planned ahead: reading the new view (its pinned photo and a few thousand tokens of text) takes
far longer than a person takes to type a follow-up.  Once the view comes within a lead of the budget (an
eighth of it, or the largest text exchange in view if that is larger: the next one may be as long), where the
next step will start is decided from the messages up to that point (``planned_step``) and never moves again,
so the new view can be read beside the current one, between questions, while the lead fills (a few
exchanges); the question that crosses the budget is then a plain follow-up.  The plan keeps half the budget
less the lead, so that with the lead that follows it the view after the step holds about half, as a step
taken at once would.  Only a photo, or a text exchange larger than any before it, can pass the mark and the
budget at once; its step is taken at once, down to half the budget, and read while the next question is
typed.  The plan is a function of the stored messages alone: a conversation read ahead and one that was not
step to the same view and get the same answer.

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


LEAD = 8  # the next step is planned once the view comes within this fraction of the budget (or an exchange) of it


def fit(messages: Sequence[Counted], window: Window, budget: int, system_tokens: int = 0) -> Window:
    """The window for the next question: ``window`` itself while the view fits ``budget``; otherwise a step, to
    the planned window (``planned_step``), or, when there was none (the latest exchange passed the mark and the
    budget at once) or it would not fit (an exchange after the plan too large for it), down to half the budget
    from the whole view."""
    pinned = _pinned(messages, window)
    groups = _groups(messages, window)
    if system_tokens + _tokens(pinned) + sum(_tokens(group) for group in groups) <= budget:
        return window
    crossing = _plan_crossing(pinned, groups, budget, system_tokens)
    if crossing is not None and crossing[0] < len(groups):
        planned = planned_step(messages, window, budget, system_tokens)
        if planned is not None and system_tokens + _tokens(in_view(messages, planned)) <= budget:
            return planned
    return _dropped(pinned, groups, budget // 2, system_tokens) or window


def planned_step(messages: Sequence[Counted], window: Window, budget: int, system_tokens: int = 0) -> Window | None:
    """Where the next step will start, once the view has come within the lead of the budget (None before; the
    current window itself if nothing can be dropped).  Decided by the exchanges up to the one that passed the
    mark, so later messages never move it."""
    pinned = _pinned(messages, window)
    groups = _groups(messages, window)
    crossing = _plan_crossing(pinned, groups, budget, system_tokens)
    if crossing is None:
        return None
    count, lead = crossing
    return _dropped(pinned, groups[:count], max(budget // 2 - lead, 0), system_tokens) or window


def _plan_crossing(
    pinned: list[Counted], groups: list[list[Counted]], budget: int, system_tokens: int
) -> tuple[int, int] | None:
    """How many exchanges of the view it takes to come within the lead of the budget, and that lead (an eighth of
    the budget, or the largest of those exchanges without images); None if all of them do not."""
    total, lead = system_tokens + _tokens(pinned), budget // LEAD
    for count, group in enumerate(groups, 1):
        size = _tokens(group)
        total += size
        if not any(message.has_images for message in group):  # photos are rare: each is not the next exchange
            lead = max(lead, size)
        if total > budget - lead:
            return count, lead
    return None


def _groups(messages: Sequence[Counted], window: Window) -> list[list[Counted]]:
    return exchanges([m for m in messages if window.start is None or m.id >= window.start])


def _dropped(pinned: list[Counted], groups: list[list[Counted]], keep: int, system_tokens: int) -> Window | None:
    """The oldest exchanges dropped until at most ``keep`` tokens are left, but never the latest exchange, and
    the latest exchange with images pinned if it would otherwise leave the view; None for a single exchange
    (nothing can be dropped)."""
    with_images = [group for group in [pinned, *groups] if any(m.has_images for m in group)]
    latest_photo = with_images[-1] if with_images else None
    for keep_from in range(1, len(groups)):
        kept = [m for group in groups[keep_from:] for m in group]
        start = kept[0].id
        pin = latest_photo if latest_photo is not None and latest_photo[0].id < start else None
        if keep_from == len(groups) - 1 or system_tokens + _tokens(pin or []) + _tokens(kept) <= keep:
            return Window(start, pin[0].id if pin else None)
    return None


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
