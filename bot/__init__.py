"""The Telegram bot: settings, handlers, streaming replies, history, and the phi3bot command."""

import os

# Opt in to python-telegram-bot's future behaviour (retry_after as a timedelta) instead of a deprecation warning.
os.environ.setdefault("PTB_TIMEDELTA", "1")
