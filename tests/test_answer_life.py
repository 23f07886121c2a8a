"""One hand on each answer's life, through the real bot: an answer that fails after the model was done with it
(its final text on the way to Telegram) must not stop the conversation's next answer, which the engine runs
under the same key; a stop reaches an answer only through its claim, while it is held."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bot.history import ConversationKey
from devkit.bot_api_server import FakeBotApi
from devkit.harness import USER, answering, bot_settings, running_bot, stored_answers
from model_store.store import ModelEntry, ModelStore

GROUP = -100321


def _final_edit(params: dict[str, Any]) -> bool:
    """The edit that shows an answer's final text: it carries the 🔁 button."""
    return '"retry:' in json.dumps(params.get("reply_markup"))


async def test_a_failure_while_the_final_text_is_delivered_does_not_touch_the_next_answer(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = bot_settings(api, int4_store[0].root, tmp_path, max_new_tokens=400)
    async with running_bot(api, settings, long_answers=True) as bot:
        engine = bot.services.engine
        assert engine is not None
        stopped: list[object] = []
        cancel = engine.cancel

        def noting(key: object, *, grace: float | None = None) -> bool:
            stopped.append(key)
            return cancel(key, grace=grace)

        monkeypatch.setattr(engine, "cancel", noting)
        username = bot.services.bot_username
        let_go = asyncio.Event()
        # The first answer's final edit waits until the next answer runs, then Telegram refuses it (twice: a
        # refused formatted text is tried once more plain).
        fault = api.fail_next("editMessageText", times=2, kind="400", when=_final_edit, hold=let_go)
        api.push_message(GROUP, f"@{username} first question", user_id=USER)
        await api.wait_for(lambda: fault.times < 2, 60, "the first answer's final edit")
        first_messages = {m.message_id for m in api.messages(GROUP)}
        api.push_message(GROUP, f"@{username} second question", user_id=USER)
        await api.wait_for(
            lambda: any(answering(m) and m.message_id not in first_messages for m in api.messages(GROUP)),
            60,
            "the second answer being written",
        )
        assert engine.queue.job(ConversationKey(GROUP)) is not None, "the second answer runs in the engine"
        let_go.set()
        stored = await stored_answers(bot, ConversationKey(GROUP), 2)
    answers = [m for m in stored if m.role == "assistant"]
    assert [a.status for a in answers] == ["failed", "complete"], [a.status for a in answers]
    assert stopped == [], "nobody pressed Stop: nothing was stopped, least of all the next answer"
    assert len(answers[1].text.split()) > 20, "the second answer was written to its end"
