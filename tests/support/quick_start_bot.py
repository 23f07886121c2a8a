"""``phi3bot`` whose start-up retries take seconds instead of a minute (bot/running/startup.py), so tests of a Bot API
server that is down, or comes up late, run quickly; otherwise the real command."""

from __future__ import annotations

import sys

import bot.running.startup
from bot.terminal.cli import main

bot.running.startup.FIRST_WAIT_SECONDS = 0.25  # attempts after 0.25, 0.5, 1 and 2 s

if __name__ == "__main__":
    sys.exit(main())
