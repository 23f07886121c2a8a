"""What the bot does with each kind of update that passed the gate: questions, retries, commands, the
conversion flow, group upgrades.

A new command or a new kind of message gets a handler here, registered in bot/app.py."""
