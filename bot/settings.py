"""All configuration, from the environment and ``.env``, checked once at start-up.

A self-hosted bot is configured by someone editing a file at 2 a.m.; every mistake should come back as one
message that names the variable and says what is expected, never as a traceback from deep inside.

Any setting can also come as a file named after its variable, holding its value alone (pydantic-settings'
secrets directory): Docker's and Compose's secrets are mounted as such files in ``/run/secrets``, and systemd's
credentials (``LoadCredential=``) in the directory it names in ``CREDENTIALS_DIRECTORY``. A token kept there is
not part of the container's or the service's environment, which ``docker inspect`` and ``systemctl show`` print.
The environment and ``.env`` win over these files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

IdList = Annotated[frozenset[int], NoDecode]
# What @BotFather hands out: the bot's numeric id, a colon, 35 characters.
TOKEN_FORMAT = re.compile(r"[0-9]+:[A-Za-z0-9_-]{35}")
# Read once into Settings, then kept from the environment the bot and its children have (bot/running/secrecy.py);
# HF_TOKEN reaches the Hub's look-ups and downloads as an argument (``Settings.hub_token``), never through an
# environment.
SECRET_VARIABLES = (
    "TELEGRAM_BOT_TOKEN",
    "WEBHOOK_SECRET_TOKEN",
    "HF_TOKEN",
    "MODEL_SERVICE_API_KEY",
    "SERVICE_API_KEY",
)
# Where Docker and Compose mount secrets, one file each; systemd's credentials directory is named by the variable.
DOCKER_SECRETS_DIR = Path("/run/secrets")
CREDENTIALS_VARIABLE = "CREDENTIALS_DIRECTORY"
# Where python-telegram-bot puts the token: appended to a URL ending in these, or in place of ``{token}``.
BOT_API_URL_ENDINGS = {"telegram_api_base_url": "/bot", "telegram_file_base_url": "/file/bot"}


class Settings(BaseSettings):
    # An empty line in .env (``WEBHOOK_URL=``) means "not set", as .env.example writes them.
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    # Telegram
    telegram_bot_token: SecretStr | None = None
    telegram_api_base_url: str | None = None
    telegram_file_base_url: str | None = None
    webhook_url: str | None = None
    # This machine only: a reverse proxy in front forwards Telegram's requests; 0.0.0.0 takes them directly.
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = Field(default=8443, ge=1, le=65535)
    webhook_secret_token: SecretStr | None = None

    # Who may use the bot
    admin_user_ids: IdList = frozenset()
    allowed_user_ids: IdList = frozenset()
    allowed_chat_ids: IdList = frozenset()
    # A group or channel the bot is added to by someone who is neither an admin nor allowed is left at once.
    leave_uninvited_groups: bool = True

    # Storage
    data_dir: Path = Path("data")
    database_path: Path | None = None
    model_store_dir: Path | None = None
    ov_cache_dir: Path | None = None
    # Images kept in the history (copies at most 1344 pixels a side): at most this many per chat, and this many MB
    # in all; past either, the images of the oldest messages are deleted (the messages' text stays).
    stored_images_per_chat: int = Field(default=100, ge=1, le=100_000)
    stored_images_mb: int = Field(default=1024, ge=1, le=1_048_576)

    # Model
    # A model service on another machine (``phi3bot serve``, or any server of the OpenAI chat-completions protocol
    # with vision), as OpenAI clients take it: http://model-host:8000/v1 (OpenVINO Model Server: .../v3); unset =
    # the model runs here, in a process of the bot's own.
    model_service_url: str | None = None
    model_service_api_key: SecretStr | None = None
    # phi3bot serve: the key its clients must send (MODEL_SERVICE_API_KEY on the bot's side); unset = anyone who
    # reaches its port may ask.
    service_api_key: SecretStr | None = None
    model: str = "microsoft/Phi-3.5-vision-instruct"
    precision: Literal["int4", "int8", "fp16", "fp32"] = "int4"
    device: str = "CPU"
    # Hugging Face: a token for gated or private repositories, passed to the Hub's look-ups and downloads only;
    # and how long any request to the Hub may wait for a connection or for the next bytes.
    hf_token: SecretStr | None = None
    hub_timeout_seconds: float = Field(default=30.0, ge=1.0, le=600.0)

    # Generation
    max_new_tokens: int = Field(default=512, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, ge=0.5, le=2.0)
    system_prompt: str = "You are a helpful assistant that answers questions about images clearly and concisely."
    request_timeout_seconds: float = Field(default=600.0, gt=0)
    num_crops: int = Field(default=4, ge=1, le=16)
    # Tokens of a conversation the model sees; unset = derived from the KV cache and the model's context.
    history_tokens: int | None = Field(default=None, ge=256, le=1_000_000)
    # After a start, conversations active within this many hours are read again in the background; 0 = off.
    warm_up_hours: float = Field(default=1.0, ge=0.0, le=720.0)
    # A model new to this machine answers three short made-up questions once loaded, so that waits are shown
    # with estimates from the first photo on; false: estimates start after the first answers.
    measure_speed_at_start: bool = True
    max_images_per_turn: int = Field(default=4, ge=1, le=10)
    # PDFs and clips become images: at most this many pages or frames per question (fewer if they would not fit
    # in two thirds of the conversation's token budget), and clips up to this long.
    pdf_pages: int = Field(default=4, ge=1, le=32)
    video_frames: int = Field(default=8, ge=1, le=32)
    video_max_seconds: float = Field(default=600.0, gt=0, le=86400.0)
    # Voice messages and audio files up to this long are heard; longer ones are refused before downloading.
    voice_max_seconds: float = Field(default=180.0, gt=0, le=3600.0)
    # Memory a file reader (a child process per photo, PDF or clip) may take beyond its libraries' own, in MB.
    reader_memory_mb: int = Field(default=1536, ge=256, le=65536)
    # Decoded photos kept for follow-ups, in MB of pixels (a photo decodes to at most about 5 MB).
    prepared_images_mb: int = Field(default=256, ge=0, le=65536)
    # KV cache shared by every conversation (prefix caching keeps each one's blocks); 0 = grow as needed.
    kv_cache_gb: float = Field(default=4.0, ge=0.0, le=256.0)
    # Answers generated together when several chats are waiting; 1 = strictly one after another.
    batch_size: int = Field(default=4, ge=1, le=32)
    # CPU tuning; see the README's measurements. 64 brought the first token ~20% sooner on a 2-core machine.
    dynamic_quantization_group_size: int | None = Field(default=64, ge=0, le=4096)
    inference_threads: int | None = Field(default=None, ge=1, le=1024)

    # Streaming and load
    edit_interval_seconds: float = Field(default=1.0, ge=0.2, le=30.0)
    group_edit_interval_seconds: float = Field(default=3.0, ge=0.5, le=60.0)
    # Private chats' answers stream as Telegram drafts (sendMessageDraft); false = edited messages, as in groups.
    stream_drafts: bool = True
    # Bots that stream drafts refresh them every 0.3-0.5 s; flood control (429) makes the bot wait as told.
    draft_interval_seconds: float = Field(default=0.4, ge=0.1, le=30.0)
    queue_max: int = Field(default=20, ge=1, le=1000)
    user_requests_per_minute: int = Field(default=6, ge=1, le=600)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("admin_user_ids", "allowed_user_ids", "allowed_chat_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        """Comma- or space-separated ids, the way people write them in a .env file."""
        if isinstance(value, str):
            parts = value.replace(",", " ").split()
            try:
                return frozenset(int(part) for part in parts)
            except ValueError as error:
                raise ValueError(f"expected numeric Telegram ids separated by commas, got {value!r}") from error
        if isinstance(value, int):
            return frozenset({value})
        return value

    @field_validator("telegram_bot_token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        """A mistyped token would otherwise surface as a rejection by Telegram, or as a request to a wrong URL."""
        if value is not None and not TOKEN_FORMAT.fullmatch(value.get_secret_value().strip()):
            raise ValueError(
                "expected the token @BotFather gave: the bot's number, a colon and 35 characters "
                "(letters, digits, _ and -); check for a missing or extra character"
            )
        return SecretStr(value.get_secret_value().strip()) if value is not None else None

    @field_validator("telegram_api_base_url", "telegram_file_base_url")
    @classmethod
    def _check_bot_api_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The token is appended to these URLs as they are: ``…/bot/`` or a missing ``/bot`` gives a URL that
        Bot API servers answer with 404, which looks like a rejected token.  A trailing slash is dropped; the
        value is not echoed, as people sometimes paste the token into it."""
        if value is None:
            return None
        url = value.strip().rstrip("/")
        ending = BOT_API_URL_ENDINGS[str(info.field_name)]
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.netloc or not (url.endswith(ending) or "{token}" in url):
            raise ValueError(
                f"expected the Bot API server's address ending in {ending}, like http://localhost:8081{ending} "
                "(the bot adds its token and the method's name)"
            )
        return url

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("https", "http") or not parts.netloc:
                raise ValueError(f"expected the public https:// address Telegram should post updates to, got {value!r}")
        return value

    @field_validator("model_service_url")
    @classmethod
    def _check_service_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("https", "http") or not parts.netloc:
                raise ValueError(f"expected the API's base address, like http://model-host:8000/v1, got {value!r}")
        return value

    @field_validator("webhook_secret_token")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value.get_secret_value()):
            raise ValueError("Telegram accepts 1 to 256 characters: letters, digits, _ and -")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("precision", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        from model_store.loader import normalise_device

        return normalise_device(value)

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.database_path = self.database_path or self.data_dir / "history.sqlite3"
        self.model_store_dir = self.model_store_dir or self.data_dir / "models"
        return self

    @property
    def store_dir(self) -> Path:
        assert self.model_store_dir is not None
        return self.model_store_dir

    @property
    def compile_cache_dir(self) -> Path | None:
        """OpenVINO's compiled-model cache: by default used only off the CPU (GPU, AUTO), where compiling is slow.

        On a CPU a warm cache loads slower than compiling anew (benchmarks/load_time.py; README, Performance).
        """
        if self.ov_cache_dir is not None:
            return self.ov_cache_dir
        return None if self.device == "CPU" else self.data_dir / "ov-cache"

    @property
    def hub_token(self) -> str | None:
        """HF_TOKEN, or else the token ``hf auth login`` stored, as the Hub's calls take it: found here, in the
        bot's process, because a conversion's process may not read the stored one (model_store/child_start.py)
        and the Hub's calls never look for one themselves (model_store/convert/hub.py)."""
        if self.hf_token is not None:
            return self.hf_token.get_secret_value()
        from huggingface_hub import get_token

        try:
            return get_token()
        except OSError:
            return None

    @property
    def views_dir(self) -> Path:
        return self.data_dir / "model-views"

    @property
    def heartbeat_path(self) -> Path:
        return self.data_dir / "heartbeat"

    @property
    def speeds_path(self) -> Path:
        """The model's measured speeds on this machine, kept across restarts (engine/speed_book.py)."""
        return self.data_dir / "speeds.json"


class SettingsError(Exception):
    """Raised with a message that lists every bad setting by its environment variable name."""


def secrets_dir() -> Path | None:
    """systemd's credentials directory when the bot runs as a service with credentials, else Docker's secrets
    directory when there is one (outside containers there is none)."""
    credentials = os.environ.get(CREDENTIALS_VARIABLE)
    if credentials:
        if not Path(credentials).is_dir():
            raise SettingsError(f"Invalid {CREDENTIALS_VARIABLE}: {credentials} is not a directory")
        return Path(credentials)
    return DOCKER_SECRETS_DIR if DOCKER_SECRETS_DIR.is_dir() else None


def load_settings(**overrides: object) -> Settings:
    """One line per bad setting, each naming its variable; values are never echoed (one may be a secret)."""
    secrets = secrets_dir()
    sources = f"your environment, .env and {secrets}" if secrets else "your environment and .env"
    try:
        return Settings(_secrets_dir=secrets, **overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            name = "_".join(str(part) for part in problem["loc"] if isinstance(part, str)).upper() or "settings"
            reason = problem["msg"].removeprefix("Value error, ")
            lines.append(f"Invalid {name} (check {sources}): {reason}")
        raise SettingsError("\n".join(lines)) from None
    except (OSError, SourceError) as error:  # a secret file (or .env) this user may not read
        unreadable = error if isinstance(error, OSError) else error.__cause__
        if not isinstance(unreadable, OSError):
            raise
        path = Path(str(unreadable.filename or "a settings file"))
        name = f"Invalid {path.name.upper()}: cannot" if secrets and path.parent == secrets else "Cannot"
        raise SettingsError(
            f"{name} read {path} ({unreadable.strerror}); make it readable by this user (uid {os.getuid()})"
        ) from None
