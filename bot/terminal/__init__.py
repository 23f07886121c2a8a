"""The ``phi3bot`` command line and the terminal chat: the same engine without Telegram."""
