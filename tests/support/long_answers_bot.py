"""``phi3bot`` whose random-weight model never ends an answer early (it always writes MAX_NEW_TOKENS).

Process tests need an answer that is still running when a signal arrives; a random model may say <|end|>
after any token, so this entry point switches on ``ignore_eos`` and is otherwise the real command.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import bot.app
from bot.settings import Settings
from bot.terminal.cli import main
from engine.backend import Backend
from model_store.store import ModelEntry

_build_engine = bot.app.build_engine


async def _never_ending(settings: Settings, entry: ModelEntry | None = None, *, loaded: bool = True) -> Backend:
    engine = await _build_engine(settings, entry, loaded=loaded)
    engine.settings = replace(engine.settings, ignore_eos=True)
    return engine


bot.app.build_engine = _never_ending

if __name__ == "__main__":
    sys.exit(main())
