"""Why a file people sent cannot be read, as data: a reason and its particulars, which bot/texts.py's ``refusal``
turns into the sentence the sender is told.  The file reader's child process answers with these plain values,
never with words, so whatever a reader says is one of the bot's own sentences."""

from __future__ import annotations

Data = int | float | str


class Refusal(Exception):
    """``reason`` names what is wrong with the file (or with the question about it); ``data`` holds the numbers and
    names its sentence needs."""

    def __init__(self, reason: str, **data: Data) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data

    def __str__(self) -> str:
        return f"{self.reason} {self.data}" if self.data else self.reason
