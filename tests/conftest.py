"""Shared fixtures: a tiny synthetic Phi-3-vision checkpoint, a store with it converted to INT4, and a
stand-in Bot API server.

The two model fixtures are built once per test session (about 20 s together) and treated as read-only by
tests; a test that needs to damage a model copies it first.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devkit.bot_api_server import FakeBotApi
from devkit.hub_server import StandInHub, stand_in_hub
from devkit.synthetic import build_synthetic_checkpoint
from model_store.convert import ConversionRequest, convert_in_subprocess
from model_store.store import ModelEntry, ModelStore


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test may touch the real Hugging Face cache, a proxy, or telemetry."""
    with pytest.MonkeyPatch.context() as patch:
        hf_home = tmp_path_factory.mktemp("hf-home")
        patch.setenv("HF_HOME", str(hf_home))
        patch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
        patch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hf_home / "hub"))  # read when it was imported
        patch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        patch.setenv("no_proxy", "127.0.0.1,localhost")
        for variable in ("TELEGRAM_BOT_TOKEN", "ADMIN_USER_IDS", "ALLOWED_USER_IDS", "ALLOWED_CHAT_IDS", "MODEL"):
            patch.delenv(variable, raising=False)
        os.environ.setdefault("PYTHONHASHSEED", "0")
        yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-phi3v", "tiny")


@pytest.fixture(scope="session")
def int4_store(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> tuple[ModelStore, ModelEntry]:
    """The tiny checkpoint converted to INT4 in its own process, as the bot and the CLI do it."""
    root = tmp_path_factory.mktemp("store")
    request = ConversionRequest(source=str(tiny_checkpoint), store_root=str(root), precision="int4", activate=True)
    entry = convert_in_subprocess(request)
    return ModelStore(root), entry


@pytest.fixture
async def api() -> AsyncIterator[FakeBotApi]:
    async with FakeBotApi() as server:
        yield server


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandInHub]:
    """The stand-in Hugging Face Hub, for this process (its API calls and file downloads) and for the processes
    it starts (a conversion's, which reads HF_ENDPOINT when it imports huggingface_hub); with a cache of its own,
    so what a test reads from it is not found in another test's downloads."""
    cache = str(tmp_path_factory.mktemp("hf-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    with stand_in_hub() as server:
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", server.endpoint)
        template = server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"  # as HF_ENDPOINT makes it
        monkeypatch.setattr("huggingface_hub.file_download.HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server
