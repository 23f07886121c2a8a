"""The answers the bot is giving now: the one record of who is being answered, in which conversation, under
which key the engine runs it, and who may stop it.

A question claims its conversation before anything is read for it and keeps the claim until the model is
done with its answer (its final text may still be on its way to Telegram then), so two questions of one
conversation never meet in the model's line, and /stop, the Stop button, /reset, /retry and the read-ahead
after an answer all ask here.  Telegram may give a conversation a new chat id while
its answer runs (a group upgraded to a supergroup): the engine goes on under the key it was asked with, and
the new key is pointed at the same answer, so the rules follow the conversation to its new id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from bot.history import ConversationKey


@dataclass
class AnswerInProgress:
    runs_under: ConversationKey  # the key the engine was asked with; a group upgrade does not change it
    asker: int | None  # the user who asked; None when Telegram did not say (only admins may stop it then)
    cancel: Callable[[ConversationKey], bool]  # the engine's: stops the answer, or takes it out of the line

    def stop(self) -> bool:
        return self.cancel(self.runs_under)


class AnswersInProgress:
    def __init__(self) -> None:
        self._by_key: dict[ConversationKey, AnswerInProgress] = {}

    def busy(self, key: ConversationKey) -> bool:
        return key in self._by_key

    @contextmanager
    def claim(
        self, key: ConversationKey, asker: int | None, cancel: Callable[[ConversationKey], bool]
    ) -> Iterator[AnswerInProgress | None]:
        """The conversation's answer for the length of the block, or None if one is already being given."""
        if key in self._by_key:
            yield None
            return
        answer = AnswerInProgress(key, asker, cancel)
        self._by_key[key] = answer
        try:
            yield answer
        finally:
            self.release(answer)

    def release(self, answer: AnswerInProgress) -> None:
        """The model is done with the answer; its conversation may ask again (safe to call more than once)."""
        for named in [named for named, held in self._by_key.items() if held is answer]:
            del self._by_key[named]

    def may_stop(self, key: ConversationKey, user_id: int | None, admin: bool) -> bool:
        """The person who asked and the bot's admins may stop an answer; with none running, anyone may try."""
        answer = self._by_key.get(key)
        return answer is None or admin or (user_id is not None and user_id == answer.asker)

    def stop(self, key: ConversationKey) -> bool:
        """Stop the conversation's answer within a token; True if there was one."""
        answer = self._by_key.get(key)
        return answer is not None and answer.stop()

    def move_chat(self, old: int, new: int) -> int:
        """A chat got a new id (a group became a supergroup): its answers running now are found under the new
        id too, until they end.  Returns how many moved."""
        moving = [(key, answer) for key, answer in self._by_key.items() if key.chat_id == old]
        for key, answer in moving:
            self._by_key.setdefault(replace(key, chat_id=new), answer)  # one running there already stays
        return len(moving)
