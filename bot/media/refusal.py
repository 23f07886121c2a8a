"""Why a file people sent cannot be read, as data: a reason and its particulars, which bot/texts.py's ``refusal``
turns into the sentence the sender is told.  The file reader's child process answers with these plain values,
never with words, so whatever a reader says is one of the bot's own sentences."""

from __future__ import annotations

from model_store.errors import Reasoned


class Refusal(Reasoned):
    """``reason`` names what is wrong with the file (or with the question about it); ``data`` holds the numbers and
    names its sentence needs."""
