"""Starting the bot: its directories, and the Bot API calls of a start, each problem one line that names the
setting to check and never contains the token.

Network errors, 5xx and flood control at start are retried for under a minute, so a bot started before the
network is up waits for it, and a server that keeps failing ends the start (exit code 2) instead of hanging it.
python-telegram-bot's own start (``run_polling``) tries once and logs a rejected token with a traceback whose
message holds the token; the bot therefore initialises the Application itself (getMe).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.ext import Application
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
)

from bot.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

TELEGRAM_API = "https://api.telegram.org/bot"
# A call that fails for the network's or the server's sake is tried again after 3, 6, 12 and 24 s; a try that
# would start more than RETRY_SECONDS after the first is not made, so slow failures (timeouts) end as soon.
ATTEMPTS = 5
FIRST_WAIT_SECONDS = 3.0
RETRY_SECONDS = 55.0


class StartupError(Exception):
    """Starting failed for a reason the person running the bot can fix; the message is one line."""


SHARED_BITS = 0o077
ENV_FILE = Path(".env")


def check_directories(settings: Settings) -> None:
    """DATA_DIR and the model store must be directories this user can write, made if missing; found here,
    before anything is opened, a wrong one is named instead of failing deep inside a later step."""
    _writable_directory(settings.data_dir, "DATA_DIR", "")
    _writable_directory(settings.store_dir, "MODEL_STORE_DIR", " (by default DATA_DIR/models)")
    assert settings.database_path is not None
    _keep_private(settings.data_dir, settings.database_path)


def _keep_private(data_dir: Path, database: Path) -> None:
    """DATA_DIR holds people's conversations and photos: the directory (the one a link names, if it is one) and
    what lies directly in it lose any access for other users (files an older release made 0644 included), and so
    does the history database wherever DATABASE_PATH puts it, with its WAL (SQLite gives those its mode); new
    files are private by the umask ``phi3bot`` sets at its start (bot/terminal/cli.py).  A ``.env`` other users can read
    (it holds the token) is named once."""
    data_dir = data_dir.resolve()
    history = [database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm")]
    for path in dict.fromkeys([data_dir, *data_dir.iterdir(), *(p for p in history if p.exists())]):
        try:
            mode = path.lstat().st_mode
            if mode & SHARED_BITS and not path.is_symlink():
                path.chmod(mode & 0o7777 & ~SHARED_BITS)
        except OSError as error:
            log.warning("could not make %s private to this user: %s", path, error.strerror)
    try:
        shared = ENV_FILE.is_file() and ENV_FILE.stat().st_mode & SHARED_BITS
    except OSError:
        shared = False
    if shared:
        log.warning(
            "%s can be read by other users of this machine and holds the token: chmod 600 .env", ENV_FILE.resolve()
        )


def _writable_directory(path: Path, variable: str, default: str) -> None:
    check = f"check {variable}{default}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:
        raise StartupError(f"{variable} {path} is a file, not a directory: {check}") from None
    except NotADirectoryError:
        raise StartupError(f"{variable} {path} cannot be a directory: a part of its path is a file: {check}") from None
    except PermissionError:
        raise StartupError(
            f"{variable} {path} cannot be written by this user (uid {os.geteuid()}): {check}, or the "
            "directory's owner and permissions"
        ) from None
    except OSError as error:
        raise StartupError(f"{variable} {path} cannot be used ({error.strerror}): {check}") from None


def _transient(error: BaseException) -> bool:
    """Network errors, timeouts, 5xx and flood control may pass; a 400 will not (PTB's BadRequest is a
    NetworkError)."""
    return isinstance(error, (NetworkError, RetryAfter)) and not isinstance(error, BadRequest)


async def connect(application: Application, settings: Settings) -> None:
    """Initialise ``application`` (its getMe checks the token), retrying while the server cannot answer."""
    await reach(settings, "getMe", application.initialize)


async def reach(
    settings: Settings, method: str, call: Callable[[], Awaitable[T]], check: str = "TELEGRAM_BOT_TOKEN"
) -> T:
    """``call``, a Bot API call of the start, retried while the server cannot answer; any other failure is
    a StartupError at once.  ``check``: the setting to name when the server refuses the call."""
    server = settings.telegram_api_base_url or TELEGRAM_API

    def waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "the Bot API server at %s cannot be reached yet (%s: %s); attempt %d of %d in %.0f s",
            server,
            method,
            _describe(error, settings),
            state.attempt_number + 1,
            ATTEMPTS,
            wait,
        )

    attempts = 0
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(ATTEMPTS) | stop_before_delay(RETRY_SECONDS),
            wait=wait_exponential(multiplier=FIRST_WAIT_SECONDS),
            before_sleep=waiting,
            reraise=True,
        ):
            attempts = attempt.retry_state.attempt_number
            with attempt:
                result = await call()
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
                f"the Bot API server at {server} could not be reached in {attempts} attempts "
                f"({method}: {_describe(error, settings)}): check the network, and TELEGRAM_API_BASE_URL if set"
            ) from None
        raise StartupError(
            f"the Bot API server at {server} refused {method} ({_describe(error, settings)}): "
            f"check {check} and TELEGRAM_API_BASE_URL"
        ) from None
    return result


def _describe(error: BaseException | None, settings: Settings) -> str:
    """The error's own words, on one line, without the token."""
    text = " ".join(str(error).split()) or type(error).__name__
    assert settings.telegram_bot_token is not None
    return text.replace(settings.telegram_bot_token.get_secret_value(), "<token>")
