"""A conversation kept in memory under the context policy: the terminal's and the benchmarks' history.

The bot keeps the same thing in SQLite (bot/answers/context_view.py); both ask engine.context_policy which messages
the model sees, so a terminal conversation grows and steps exactly as the bot's do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.context_policy import Window, estimate_tokens, fit, in_view, planned_step
from engine.conversation import Turn
from engine.engine import Finished
from engine.images import image_tokens


@dataclass(frozen=True)
class _Remembered:
    id: int
    turn: Turn
    tokens: int

    @property
    def role(self) -> str:
        return self.turn.role

    @property
    def has_images(self) -> bool:
        return bool(self.turn.images)


@dataclass
class ConversationMemory:
    budget: int
    system_prompt: str = ""
    num_crops: int = 4
    window: Window = field(default_factory=Window)
    _messages: list[_Remembered] = field(default_factory=list)

    def view(self) -> list[Turn]:
        """What the model sees before the next question."""
        return [message.turn for message in in_view(self._messages, self.window)]

    def next_view(self) -> list[Turn] | None:
        """What the model will see after the coming step, once it is planned: read ahead beside ``view``."""
        planned = planned_step(self._messages, self.window, self.budget, self._system_tokens())
        if planned is None or planned == self.window:
            return None
        return [message.turn for message in in_view(self._messages, planned)]

    def add(self, turn: Turn, tokens: int | None = None) -> None:
        """Remember a message; ``tokens`` as the model counted it (``Finished.report``), else estimated."""
        if tokens is None:
            images = [image_tokens(image.width, image.height, self.num_crops) for image in turn.images]
            tokens = estimate_tokens(turn.text, images)
        self._messages.append(_Remembered(len(self._messages), turn, tokens))

    def record(self, question: Turn, answer: Finished) -> bool:
        """Remember a question and its answer as the model counted them; True if the policy took a step."""
        self.add(question, answer.report.question_tokens or None)
        self.add(Turn("assistant", answer.text), answer.answer_tokens or None)
        return self.step()

    def step(self) -> bool:
        """Apply the policy after a message was added; True if the view changed its start (a step)."""
        before = self.window
        self.window = fit(self._messages, self.window, self.budget, self._system_tokens())
        return self.window != before

    def _system_tokens(self) -> int:
        return estimate_tokens(self.system_prompt) if self.system_prompt else 0

    def clear(self) -> None:
        self._messages.clear()
        self.window = Window()
