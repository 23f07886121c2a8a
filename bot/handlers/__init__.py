"""What the bot does with each update, in the order python-telegram-bot runs them: the gate first (gate.py, group
-1: access, rates and buttons decided once, before any other handler), then questions, retries, commands, the
conversion flow, group upgrades and being added to a group (membership.py).

A new command or a new kind of message gets a handler here, registered in bot/app.py."""
