"""Configuration is validated once, with messages that name the variable to fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.running.runtime import cpu_tuning
from bot.settings import SettingsError, load_settings

TOKEN = "123456789:AAHZZtokenZZ-abcdefghijklmnopqrstuv"


def test_defaults_and_derived_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    settings = load_settings()
    assert settings.precision == "int4"
    assert settings.device == "CPU"
    assert settings.database_path == Path("data") / "history.sqlite3"
    assert settings.store_dir == Path("data") / "models"
    assert settings.admin_user_ids == frozenset()
    assert settings.webhook_listen == "127.0.0.1", "a webhook is reachable from outside only when asked for"


def test_ids_are_read_as_people_write_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADMIN_USER_IDS", "123, 456")
    monkeypatch.setenv("ALLOWED_CHAT_IDS", "-1001 -1002")
    monkeypatch.setenv("PRECISION", "INT8")
    monkeypatch.setenv("DEVICE", "gpu")
    settings = load_settings()
    assert settings.admin_user_ids == frozenset({123, 456})
    assert settings.allowed_chat_ids == frozenset({-1001, -1002})
    assert settings.precision == "int8"
    assert settings.device == "GPU"


def test_env_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"TELEGRAM_BOT_TOKEN={TOKEN}\nMAX_NEW_TOKENS=64\nHF_TOKEN=hf_ZZhubZZ\n")
    settings = load_settings()
    assert settings.telegram_bot_token is not None
    assert settings.telegram_bot_token.get_secret_value() == TOKEN
    assert settings.hub_token == "hf_ZZhubZZ"
    assert "ZZtokenZZ" not in repr(settings) and "ZZhubZZ" not in repr(settings), "never in logs or tracebacks"
    assert settings.max_new_tokens == 64


def test_empty_lines_in_env_mean_not_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("WEBHOOK_URL=\nWEBHOOK_SECRET_TOKEN=\nMAX_NEW_TOKENS=\nADMIN_USER_IDS=\n")
    settings = load_settings()
    assert settings.webhook_url is None and settings.webhook_secret_token is None
    assert settings.max_new_tokens == 512
    assert settings.admin_user_ids == frozenset()


def test_webhook_settings_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEBHOOK_URL", "bot.example.com/hook")
    monkeypatch.setenv("WEBHOOK_SECRET_TOKEN", "has spaces!")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "WEBHOOK_URL" in message and "https://" in message
    assert "WEBHOOK_SECRET_TOKEN" in message and "has spaces" not in message, "a secret is not echoed"
    monkeypatch.setenv("WEBHOOK_URL", "https://bot.example.com/telegram/hook")
    monkeypatch.setenv("WEBHOOK_SECRET_TOKEN", "s3cret_Value-1")
    assert load_settings().webhook_url == "https://bot.example.com/telegram/hook"


def test_cpu_tuning_reaches_openvino_by_its_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert cpu_tuning(load_settings()).properties() == {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 64}
    monkeypatch.setenv("DYNAMIC_QUANTIZATION_GROUP_SIZE", "0")
    monkeypatch.setenv("INFERENCE_THREADS", "1")
    assert cpu_tuning(load_settings()).properties() == {
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
        "INFERENCE_NUM_THREADS": 1,
    }


def test_compiled_model_cache_is_used_off_the_cpu_or_when_asked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings().compile_cache_dir is None, "on a CPU the cache measured slower than compiling"
    monkeypatch.setenv("DEVICE", "GPU")
    assert load_settings().compile_cache_dir == Path("data") / "ov-cache"
    monkeypatch.setenv("DEVICE", "CPU")
    monkeypatch.setenv("OV_CACHE_DIR", str(tmp_path / "blobs"))
    assert load_settings().compile_cache_dir == tmp_path / "blobs"


def test_every_bad_value_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADMIN_USER_IDS", "alice")
    monkeypatch.setenv("PRECISION", "int3")
    monkeypatch.setenv("DEVICE", "TPU")
    monkeypatch.setenv("MAX_NEW_TOKENS", "0")
    monkeypatch.setenv("HUB_TIMEOUT_SECONDS", "0")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    for name in ("ADMIN_USER_IDS", "PRECISION", "DEVICE", "MAX_NEW_TOKENS", "HUB_TIMEOUT_SECONDS"):
        assert name in message
    assert "Traceback" not in message


def test_cli_exits_2_with_one_clear_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot.terminal.cli", "models"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PRECISION": "int3", "PYTHONPATH": str(Path(__file__).parents[1])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "PRECISION" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_without_a_token_exits_2_and_says_what_to_do(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot.terminal.cli", "run"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "TELEGRAM_BOT_TOKEN" in done.stderr and "BotFather" in done.stderr


@pytest.mark.parametrize(
    "token", ["notatoken", "123456789", ":AAHZZtokenZZ-abcdefghijklmnopqrstuv", TOKEN[:-1], TOKEN + "w", TOKEN + "!"]
)
def test_a_token_not_shaped_like_botfathers_is_refused_without_being_echoed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, token: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", token)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    [line] = str(caught.value).splitlines()
    assert line.startswith("Invalid TELEGRAM_BOT_TOKEN") and "35 characters" in line
    assert token not in line


def test_bot_api_urls_lose_a_trailing_slash_and_must_end_in_bot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The token is appended to these URLs: ``…/bot/<token>`` and ``…8081<token>`` are both answered with 404."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", "http://localhost:8081/bot/")
    monkeypatch.setenv("TELEGRAM_FILE_BASE_URL", "http://localhost:8081/file/bot/")
    settings = load_settings()
    assert settings.telegram_api_base_url == "http://localhost:8081/bot"
    assert settings.telegram_file_base_url == "http://localhost:8081/file/bot"
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", "https://api.telegram.org/bot{token}/test")  # Telegram's test servers
    assert load_settings().telegram_api_base_url == "https://api.telegram.org/bot{token}/test"
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", "http://localhost:8081")
    monkeypatch.setenv("TELEGRAM_FILE_BASE_URL", "http://localhost:8081/file")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    api_line, file_line = str(caught.value).splitlines()
    assert api_line.startswith("Invalid TELEGRAM_API_BASE_URL") and "ending in /bot" in api_line
    assert file_line.startswith("Invalid TELEGRAM_FILE_BASE_URL") and "ending in /file/bot" in file_line


def test_the_limits_on_files_and_stored_images_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert (settings.reader_memory_mb, settings.stored_images_per_chat, settings.stored_images_mb) == (1536, 100, 1024)
    monkeypatch.setenv("READER_MEMORY_MB", "64")
    monkeypatch.setenv("STORED_IMAGES_PER_CHAT", "0")
    monkeypatch.setenv("STORED_IMAGES_MB", "lots")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    for name in ("READER_MEMORY_MB", "STORED_IMAGES_PER_CHAT", "STORED_IMAGES_MB"):
        assert name in str(caught.value)


def test_without_hf_token_the_bot_hands_on_the_token_hf_auth_login_stored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A conversion's process may not read the stored token (model_store/child_start.py): the bot reads it."""
    stored = tmp_path / "token"
    stored.write_text("hf_ZZstoredZZ\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(stored))
    assert load_settings().hub_token == "hf_ZZstoredZZ"
    stored.unlink()
    assert load_settings().hub_token is None
