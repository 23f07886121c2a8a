"""The check of the commands for the bot's admins (ADMIN_USER_IDS): /stats, /convert and its confirmation."""

from __future__ import annotations

from telegram import Message, Update

from bot import texts
from bot.admission.access import Sender, sender_for
from bot.services import Services


def is_admin(services: Services, update: Update) -> bool:
    user = update.effective_user
    return services.access.is_admin(user.id if user else None)


async def for_admins(services: Services, update: Update) -> tuple[Message, Sender] | None:
    """The command's message and sender, or None once anyone else heard the refusal (once in a while at most:
    bot/admission/refusals.py)."""
    message, sender = update.effective_message, sender_for(update)
    if message is None or sender is None:
        return None
    if not services.access.is_admin(sender.user_id):
        services.refusals.log(sender.id, message.chat_id, "an admin command from someone not an admin")
        await services.refusals.say(message, sender.id, texts.ADMINS_ONLY)
        return None
    return message, sender
