"""What the model sees of a chat's conversation: the context policy (engine/context_policy.py) applied to the
history in SQLite.

The window the policy chooses is stored with the conversation, so the prompt is a function of the database
alone: the same after a restart as before it, and the same whether the model's process cached it or not.
Only the messages in view are read with their images.  A question whose images were deleted under the limits
on stored images (bot/history/images.py) keeps its text, and the model is told in its place that an image was
there and is gone, rather than left to answer as if it had never been sent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot import texts
from bot.history import ConversationKey, HistoryStore, OutlineRow, StoredImage, StoredMessage
from bot.media.decoding import ImageRejected
from bot.services import Services
from engine.backend import Backend
from engine.context_policy import estimate_tokens, fit, in_view, planned_step
from engine.conversation import Turn
from engine.images import PreparedImage, image_tokens

log = logging.getLogger(__name__)

Prepare = Callable[[StoredImage], Awaitable[PreparedImage]]


@dataclass(frozen=True)
class View:
    turns: list[Turn]
    tokens: int  # as the context policy counts them (without the system prompt)
    system_prompt: str  # the conversation's persona, or the configured system prompt
    next_step: list[Turn] | None = None  # what the model sees after the coming step, once it is planned


@dataclass(frozen=True)
class _Counted:
    id: int
    role: str
    tokens: int
    has_images: bool
    images_pruned: int


def _counted(row: OutlineRow, num_crops: int) -> _Counted:
    """Messages stored before counts were kept, or that lost their images, are estimated; their images as square
    photos."""
    tokens = row.tokens
    if tokens is None:
        tokens = estimate_tokens(row.text, [image_tokens(336, 336, num_crops)] * row.images)
    return _Counted(row.id, row.role, tokens, row.images > 0, row.images_pruned)


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
    question answered again), and the view after the coming step once the policy has planned it; a step of the
    policy is stored.  ``system_prompt``: unless the conversation has a persona of its own."""
    persona = await history.persona(key)
    if persona is not None:
        system_prompt = persona
    outline = await history.outline(key)
    rows = [_counted(row, num_crops) for row in outline.rows if before is None or row.id < before]
    system_tokens = estimate_tokens(system_prompt) if system_prompt else 0
    window = fit(rows, outline.window, budget, system_tokens)
    if window != outline.window:
        await history.set_window(key, window)
    shown = in_view(rows, window)
    stored = await history.messages([row.id for row in shown])
    turns = {message.id: await _turn(message, prepare) for message in stored}
    planned = planned_step(rows, window, budget, system_tokens)
    next_step = None
    if planned is not None and planned != window:  # the plan's messages are all in view now (unless just deleted)
        next_step = [turns[row.id] for row in in_view(rows, planned) if row.id in turns]
    return View(list(turns.values()), sum(row.tokens for row in shown), system_prompt, next_step)


async def _turn(message: StoredMessage, prepare: Prepare) -> Turn:
    """The message as the model sees it; images that are gone (deleted, or stored as sent by an older version
    and refused by the reader now) are said to be gone."""
    images, gone = [], message.images_pruned
    for image in message.images:
        try:
            images.append(await prepare(image))
        except ImageRejected as refusal:
            log.info("an image in view could not be read again (%s); the model is told it is gone", refusal.reason)
            gone += 1
    text = f"{texts.images_gone(gone)}\n{message.text}" if gone else message.text
    return Turn("user" if message.role == "user" else "assistant", text, tuple(images))


async def image_gone(history: HistoryStore, key: ConversationKey) -> bool:
    """Whether the conversation's last question was a photo (or file) sent without words that lost its images to
    the limits on stored images: a text question now would be about it.  Later in a conversation the model is
    told in the photo's place that it is gone, and answers what it can."""
    outline = await history.outline(key)
    rows = [_counted(row, num_crops=1) for row in outline.rows]  # token counts play no part in what is in view
    last = next((row for row in reversed(in_view(rows, outline.window)) if row.role == "user"), None)
    return last is not None and last.images_pruned > 0


async def model_view(services: Services, engine: Backend, key: ConversationKey, before: int | None = None) -> View:
    """What this engine's model sees of the conversation before its next question, or before message ``before``:
    its budget and crops, the configured persona, and the images decoded as the bot keeps them."""
    return await conversation_view(
        services.history,
        key,
        budget=engine.history_tokens,
        system_prompt=services.settings.system_prompt,
        num_crops=engine.num_crops,
        prepare=services.images.one,
        before=before,
    )
