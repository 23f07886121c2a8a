"""The rules of who gets the bot and the model, kept apart from the handlers that apply them: who may use the
bot where (access.py), how fast (its rate limiter), how a refusal is said without costing the bot (refusals.py),
when a message is meant for the bot (addressing.py), and which conversation is being answered for whom now
(answers_in_progress.py: the one record every claim, stop and release of an answer goes through).

A new rule about who or how often goes here, and is applied once per update by bot/handlers/gate.py."""
