"""The model reads conversations ahead of their questions, in the background (bot/running/background.py): a
conversation after each answer or a new persona (and the view after its coming step, once that is planned),
and after a start or a new model the ones active lately."""

from __future__ import annotations

import logging
import time

from bot.answers.context_view import model_view
from bot.history import ConversationKey
from bot.services import Services
from engine.backend import Backend

log = logging.getLogger(__name__)


def prepare_soon(services: Services, key: ConversationKey) -> None:
    """Have the model read the conversation now, ahead of its next question, unless a question of it is
    already in line (which reads it anyway)."""
    engine = services.engine
    if engine is not None and not services.answers.busy(key) and not services.stopping.is_set():
        services.background.start(_prepare(services, engine, key))


async def _prepare(services: Services, engine: Backend, key: ConversationKey) -> None:
    try:
        view = await model_view(services, engine, key)
        await engine.prepare(key, view.turns, system_prompt=view.system_prompt)
        if view.next_step is not None:  # the coming step of the context policy, read beside the current view
            await engine.prepare(key, view.next_step, system_prompt=view.system_prompt, ahead=True)
    except Exception:
        log.exception("could not prepare the conversation in chat %s", key.chat_id)


def warm_up(services: Services) -> None:
    """After a start or a new model: the conversations active within WARM_UP_HOURS are read again, the most
    recent first, one after another, as long as they fit in the KV cache together."""
    engine, hours = services.engine, services.settings.warm_up_hours
    if engine is not None and hours > 0:
        services.background.start(_warm_up(services, engine, time.time() - hours * 3600))


async def _warm_up(services: Services, engine: Backend, since: float) -> None:
    room = engine.kv_cache_tokens * 3 // 4  # the rest for the questions that come meanwhile
    for key in await services.history.recent_conversations(since):
        view = await model_view(services, engine, key)
        room -= view.tokens
        if room < 0:
            break
        prepared = await engine.prepare(key, view.turns, system_prompt=view.system_prompt)
        log.info("warmed up chat %s in %.1f s (%d pieces)", key.chat_id, prepared.seconds, prepared.pieces)
