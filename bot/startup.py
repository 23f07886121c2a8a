"""Reaching Telegram at start-up: network errors are retried for about a minute, and every problem becomes one
line that names the setting to check and never contains the token.

python-telegram-bot's own start (``run_polling``) tries once and logs a rejected token with a traceback whose
message holds the token; the bot therefore initialises the Application itself first (getMe), and
python-telegram-bot's later call finds it initialised.
"""

from __future__ import annotations

import logging

from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.ext import Application
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential

from bot.settings import Settings

log = logging.getLogger(__name__)

TELEGRAM_API = "https://api.telegram.org/bot"
# A bot started before the network is up (a boot, a container restart) waits for it: attempts after 4, 8, 16
# and 32 s, about a minute in all.
ATTEMPTS = 5
FIRST_WAIT_SECONDS = 4.0


class StartupError(Exception):
    """Starting failed for a reason the person running the bot can fix; the message is one line."""


def _transient(error: BaseException) -> bool:
    """Network errors, timeouts, 5xx and flood control may pass; a 400 will not (PTB's BadRequest is a
    NetworkError)."""
    return isinstance(error, (NetworkError, RetryAfter)) and not isinstance(error, BadRequest)


async def connect(application: Application, settings: Settings) -> None:
    """Initialise ``application`` (its getMe checks the token), retrying while the server cannot be reached."""
    server = settings.telegram_api_base_url or TELEGRAM_API

    def waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "the Bot API server at %s cannot be reached yet (%s); attempt %d of %d in %.0f s",
            server,
            _describe(error, settings),
            state.attempt_number + 1,
            ATTEMPTS,
            wait,
        )

    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(ATTEMPTS),
            wait=wait_exponential(multiplier=FIRST_WAIT_SECONDS),
            before_sleep=waiting,
            reraise=True,
        ):
            with attempt:
                await application.initialize()
    except InvalidToken:
        where = (
            "TELEGRAM_BOT_TOKEN, and TELEGRAM_API_BASE_URL" if settings.telegram_api_base_url else "TELEGRAM_BOT_TOKEN"
        )
        raise StartupError(
            f"the Bot API server at {server} rejected the bot's token (401/404): check {where} "
            "(a token revoked in @BotFather stops working at once)"
        ) from None
    except TelegramError as error:
        if _transient(error):
            raise StartupError(
                f"the Bot API server at {server} could not be reached in {ATTEMPTS} attempts "
                f"({_describe(error, settings)}): check the network, and TELEGRAM_API_BASE_URL if set"
            ) from None
        raise StartupError(
            f"the Bot API server at {server} refused the bot ({_describe(error, settings)}): "
            "check TELEGRAM_BOT_TOKEN and TELEGRAM_API_BASE_URL"
        ) from None


def _describe(error: BaseException | None, settings: Settings) -> str:
    """The error's own words, on one line, without the token."""
    text = " ".join(str(error).split()) or type(error).__name__
    assert settings.telegram_bot_token is not None
    return text.replace(settings.telegram_bot_token.get_secret_value(), "<token>")
