"""Settings from files named after their variables: Docker's and Compose's secrets (/run/secrets) and systemd's
credentials (CREDENTIALS_DIRECTORY), so that the token stays out of the environment that `docker inspect` prints.

The processes here get their secrets directory through CREDENTIALS_DIRECTORY, as systemd gives it; /run/secrets
is the same code path with another directory (tests/test_deployment_files.py checks that Compose mounts the token
there under the setting's name).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from bot.settings import SettingsError, load_settings
from devkit.bot_api_server import FakeBotApi
from devkit.harness import USER
from devkit.processes import bot_environment, bot_process
from tests.test_bot_process import failed_start, without_root_overrides

TOKEN = "123456789:AAHZZtokenZZ-abcdefghijklmnopqrstuv"


def secrets(directory: Path, **files: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def environment_with_token_in_a_file(api: FakeBotApi, work: Path, text: str) -> dict[str, str]:
    environment = bot_environment(api, work / "store", work / "data")
    del environment["TELEGRAM_BOT_TOKEN"]
    environment["CREDENTIALS_DIRECTORY"] = str(secrets(work / "credentials", telegram_bot_token=text))
    return environment


def test_a_setting_comes_from_its_file_unless_the_environment_sets_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    directory = secrets(tmp_path / "credentials", telegram_bot_token=f"{TOKEN}\n", WEBHOOK_SECRET_TOKEN="s3cret_1")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    settings = load_settings()
    assert settings.telegram_bot_token is not None and settings.telegram_bot_token.get_secret_value() == TOKEN
    assert settings.webhook_secret_token is not None, "any setting, its file named in either case"
    assert settings.webhook_secret_token.get_secret_value() == "s3cret_1"
    other = "987654321:AAHZZtokenZZ-abcdefghijklmnopqrstuv"
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", other)
    settings = load_settings()
    assert settings.telegram_bot_token is not None and settings.telegram_bot_token.get_secret_value() == other


def test_a_credentials_directory_that_is_not_one_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "nowhere"))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == f"Invalid CREDENTIALS_DIRECTORY: {tmp_path / 'nowhere'} is not a directory"


async def test_the_bot_starts_with_its_token_in_a_file_alone(api: FakeBotApi, tmp_path: Path) -> None:
    environment = environment_with_token_in_a_file(api, tmp_path, api.token + "\n")
    async with bot_process(environment, tmp_path) as bot:
        await bot.wait_for_log(" ready: ", 120)
        api.push_message(USER, "/help", user_id=USER)
        await api.wait_for(lambda: bool(api.messages(USER)), 60, "the answer to /help")
        bot.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bot.process.wait(), 60) == 0, bot.stderr[-3000:]
    assert api.calls_of("getMe"), "Telegram accepted the token read from the file"


async def test_a_bad_token_in_a_file_is_one_line_naming_the_variable_and_the_directory(
    api: FakeBotApi, tmp_path: Path
) -> None:
    bad = TOKEN[:-1]
    environment = environment_with_token_in_a_file(api, tmp_path, bad)
    last, before = await asyncio.to_thread(failed_start, environment, tmp_path, bad)
    assert before == [], before
    assert last.startswith(f"Invalid TELEGRAM_BOT_TOKEN (check your environment, .env and {tmp_path / 'credentials'})")
    assert "35 characters" in last


async def test_a_token_file_this_user_cannot_read_is_one_line_saying_so(api: FakeBotApi, tmp_path: Path) -> None:
    """A file Compose mounts keeps its owner and mode from the host: root's 0600 is unreadable to the bot's user."""
    wrapper = without_root_overrides()
    environment = environment_with_token_in_a_file(api, tmp_path, api.token)
    token_file = tmp_path / "credentials" / "telegram_bot_token"
    token_file.chmod(0)
    try:
        last, before = await asyncio.to_thread(failed_start, environment, tmp_path, api.token, wrapper=wrapper)
    finally:
        token_file.chmod(0o600)
    assert before == [], before
    assert last.startswith(f"Invalid TELEGRAM_BOT_TOKEN: cannot read {token_file} (Permission denied)"), last
    assert "make it readable by this user (uid " in last
    assert api.calls == [], "nothing was asked of Telegram"
