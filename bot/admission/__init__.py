"""Whether an update reaches a handler at all: who may use the bot where, how fast, and how a refusal is said.

A new rule about who or how often goes here, into the one gate (gate.py) every update passes before the handlers."""
