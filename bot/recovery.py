"""After a crash or kill -9: answers that were streaming still show a cursor and a Stop button that no longer
work. Their last saved text (see the handler's periodic save) is put back with a note, the button removed."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from telegram import Bot
from telegram.error import TelegramError

from bot import texts
from bot.formatting import plain_parts
from bot.history import Interrupted

log = logging.getLogger(__name__)


async def finish_interrupted(bot: Bot, answers: Sequence[Interrupted]) -> None:
    for answer in answers:
        parts = plain_parts(answer.text + texts.INTERRUPTED if answer.text.strip() else texts.INTERRUPTED.strip())
        for index, message_id in enumerate(answer.telegram_message_ids):
            try:
                if index < len(parts):
                    await bot.edit_message_text(parts[index].text, answer.chat_id, message_id, reply_markup=None)
                else:  # shown after the last save: its words stay, its dead Stop button goes
                    await bot.edit_message_reply_markup(answer.chat_id, message_id, reply_markup=None)
            except TelegramError as error:  # deleted, too old, chat gone: nothing left to repair
                log.info("could not finish interrupted message %s in chat %s: %s", message_id, answer.chat_id, error)
