"""What the model sees of a chat's conversation: the context policy (engine/context_policy.py) applied to the
history in SQLite.

The window the policy chooses is stored with the conversation, so the prompt is a function of the database
alone: the same after a restart as before it, and the same whether the model's process cached it or not.
Only the messages in view are read with their images.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from bot.history import ConversationKey, HistoryStore, OutlineRow, StoredImage
from engine.context_policy import estimate_tokens, fit, in_view
from engine.conversation import Turn
from engine.images import PreparedImage, image_tokens

Prepare = Callable[[bytes, str], PreparedImage]


@dataclass(frozen=True)
class View:
    turns: list[Turn]
    tokens: int  # as the context policy counts them (without the system prompt)
    system_prompt: str  # the conversation's persona, or the configured system prompt


@dataclass(frozen=True)
class _Counted:
    id: int
    role: str
    tokens: int
    has_images: bool


def _counted(row: OutlineRow, num_crops: int) -> _Counted:
    """Messages stored before counts were kept are estimated; their images as square photos."""
    tokens = row.tokens
    if tokens is None:
        tokens = estimate_tokens(row.text, [image_tokens(336, 336, num_crops)] * row.images)
    return _Counted(row.id, row.role, tokens, row.images > 0)


async def conversation_view(
    history: HistoryStore,
    key: ConversationKey,
    *,
    budget: int,
    system_prompt: str,
    num_crops: int,
    prepare: Prepare,
    before: int | None = None,
) -> View:
    """The messages the model sees before the conversation's next question (or before message ``before``, a
    question answered again); a step of the policy is stored.  ``system_prompt``: unless the conversation has
    a persona of its own."""
    persona = await history.persona(key)
    if persona is not None:
        system_prompt = persona
    outline = await history.outline(key)
    rows = [_counted(row, num_crops) for row in outline.rows if before is None or row.id < before]
    window = fit(rows, outline.window, budget, estimate_tokens(system_prompt) if system_prompt else 0)
    if window != outline.window:
        await history.set_window(key, window)
    shown = in_view(rows, window)
    stored = await history.messages([row.id for row in shown])

    async def images(found: tuple[StoredImage, ...]) -> tuple[PreparedImage, ...]:
        return tuple([await asyncio.to_thread(prepare, image.data, image.sha256) for image in found])

    turns = [Turn("user" if m.role == "user" else "assistant", m.text, await images(m.images)) for m in stored]
    return View(turns, sum(row.tokens for row in shown), system_prompt)
