"""One answer shown as the model writes it: the engine's events become the status line, the streamed text,
and the final message with its footer and 🔁 button.  A question asked aloud shows what was heard above its
answer (and is stored as heard); one in which no words were made out is told so and forgotten.

The answer is recorded before each step of it is shown (bot/output/recovery.py), and settled once its messages show
the final text: a crash or a hurried shutdown at any point leaves it repairable.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bot import texts
from bot.admission.answers_in_progress import AnswerInProgress
from bot.answers.asking import Asking
from bot.history import ConversationKey
from bot.media.material import Material
from bot.output.buttons import retry_keyboard, stop_keyboard
from bot.output.chat import is_private
from bot.output.recovery import AnswerRecord
from bot.output.reply_stream import ReplyStream
from bot.output.retries import Postponed, Undeliverable
from bot.services import Services
from engine.engine import Chunk, Event, Finished, Heard, Started, Waiting
from engine.generation import Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredExchange:
    """The rows of the question and of its answer, as the history stored them when the answer began."""

    question_id: int
    answer_id: int


class AnswerStream:
    """In private chats the answer streams as a draft where Telegram offers them, in groups as edits at the
    group's slower pace; ``reply_to``: the message it answers."""

    def __init__(self, services: Services, asking: Asking, stored: StoredExchange, reply_to: int | None) -> None:
        message, settings = asking.message, services.settings
        private = is_private(message)
        self.services = services
        self.key: ConversationKey = asking.key
        self.material: Material = asking.material
        self.stored = stored
        self.record = AnswerRecord(services.history, stored.answer_id)
        self.stream = ReplyStream(
            message.get_bot(),
            message.chat_id,
            self.record,
            reply_to=reply_to,
            thread_id=asking.key.thread_id or None,
            interval=settings.edit_interval_seconds if private else settings.group_edit_interval_seconds,
            stopping=services.stopping,
            drafts=services.drafts if private else None,
            stop_button=stop_keyboard(stored.answer_id),
        )
        self.text = ""
        self._claimed: AnswerInProgress | None = None
        self._listening = asking.speech is not None  # until the speech model has written the question down
        self._unheard = False  # a recording without words: nothing was asked
        self._images = 0  # new images the question shows the model
        retried = asking.retried
        if retried is not None and retried.question.heard:  # answered again below what was heard, as the first time
            self.stream.head(texts.heard(retried.question.heard))

    async def show(self, events: AsyncIterator[Event], claimed: AnswerInProgress) -> None:
        """``claimed`` is released once the model is done: the conversation may ask again while the final text
        is on its way to Telegram, which flood control may hold up for minutes."""
        history = self.services.history
        self._claimed = claimed
        try:
            await self.stream.start(texts.PLACEHOLDER)
            finished = await self._follow(events)
            if self._unheard or self._listening:  # no words in the recording, or it ended before they were heard
                await self._nothing_asked(finished)
                return
            claimed.release()
            final = finished.text or self.text
            self.record.status = finished.status
            if finished.status == "complete" and not final.strip():
                log.warning("the model gave no answer in chat %s", self.key.chat_id)
                self.record.status = "failed"
            await history.set_tokens(_counts(self.stored, finished))
            # Recorded before the final edit: a follow-up sent the moment the answer looks finished has it as context.
            await self._finish(final)
        except Postponed as error:
            log.info(
                "the answer in chat %s is stored; the next start shows its final text (%s)", self.key.chat_id, error
            )
        except Undeliverable as error:
            log.info("chat %s cannot receive messages (%s); answer stopped", self.key.chat_id, error)
            await self._cut_short("cancelled", show=False)
        except Exception:
            log.exception("answering in chat %s failed", self.key.chat_id)
            try:  # the user is told, unless what failed was the database or Telegram itself
                await self._cut_short("failed", show=True)
            except Exception as error:
                log.warning("could not show the failure in chat %s: %s", self.key.chat_id, error)
        finally:
            await self.stream.close()

    async def _follow(self, events: AsyncIterator[Event]) -> Finished:
        """The events to their end, not just to ``Finished``: the model's slot is free once they have ended,
        before the final text is shown (which flood control may hold up)."""
        finished: Finished | None = None
        async for event in events:
            if isinstance(event, Waiting):
                await self.stream.status(texts.waiting(event.position, event.seconds))
            elif isinstance(event, Started):
                self._images = event.images
                label = self.material.label
                await self.stream.status(
                    texts.LISTENING if self._listening else texts.looking(event.images, event.seconds, label)
                )
            elif isinstance(event, Heard):
                await self._heard(event)
            elif isinstance(event, Chunk):
                self.text += event.text
                await self.stream.update(self.text)
            else:
                finished = event
        if finished is None:
            raise RuntimeError("the engine's events ended without an answer's end")
        return finished

    async def _heard(self, heard: Heard) -> None:
        """The question as the speech model wrote it down: stored in the question's place and shown above the
        answer from now on."""
        self._listening = False
        if not heard.text.strip():
            self._unheard = True
            return
        await self.services.history.hear(self.stored.question_id, heard.question, heard.text)
        self.stream.head(texts.heard(heard.text))
        await self.stream.status(texts.looking(self._images, None, self.material.label))

    async def _nothing_asked(self, finished: Finished) -> None:
        """A question asked aloud that asked nothing: no words were made out, or it was stopped, timed out or
        failed before they were.  The placeholder says so, without a 🔁 button (there is no question to ask again),
        then the exchange is forgotten, all while the conversation is still claimed, so no follow-up's view ever
        holds its empty question; should Telegram keep the message waiting, the rows stay for the next start's
        repair."""
        self.record.status = "cancelled" if finished.status in ("cancelled", "timeout") else "failed"
        note = texts.NOT_HEARD if self._unheard else texts.footer(finished.status, "").strip()
        await self.stream.finish("", note)
        await self.services.history.forget_exchange(self.stored.question_id, self.stored.answer_id)

    async def _finish(self, text: str) -> None:
        footer = texts.footer(self.record.status, text, self.material.note)
        await self.stream.finish(text, footer, retry_keyboard(self.stored.answer_id))
        await self.services.history.settle(self.stored.answer_id)

    async def _cut_short(self, status: Status, *, show: bool) -> None:
        """The answer stops here and keeps what was written: shown with its footer where the chat can take it,
        else only recorded.  The model is stopped through the claim, which does nothing once released (the
        conversation's next answer may be running by then)."""
        if self._claimed is not None:
            self._claimed.stop()
        self.record.status = status
        if show:
            await self._finish(self.text)
        else:
            await self.record(self.text, self.stream.message_ids)
            await self.services.history.settle(self.stored.answer_id)


def _counts(stored: StoredExchange, finished: Finished) -> dict[int, int]:
    """The token counts the model reported; a message without one is estimated later (bot/answers/context_view.py)."""
    counts = {}
    if finished.report.question_tokens:
        counts[stored.question_id] = finished.report.question_tokens
    if finished.answer_tokens:
        counts[stored.answer_id] = finished.answer_tokens
    return counts
