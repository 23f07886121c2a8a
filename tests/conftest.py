"""Shared fixtures: a tiny synthetic Phi-3-vision checkpoint, its conversions to INT4 (by ``phi3bot convert``,
the store most tests serve from), INT8 and FP16 (in this process, their progress recorded), and a stand-in Bot API
server.

A conversion takes most of half a minute, so each model fixture is built once per test run and treated as
read-only by tests; a test that needs to damage a model copies it first.  Under pytest-xdist the workers share
them: the first worker to ask builds one in the run's shared temporary directory while the others wait, instead
of each converting a model of its own on the same cores.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from devkit.bot_api_server import FakeBotApi
from devkit.hub_server import StandInHub, stand_in_hub
from devkit.processes import run_phi3bot
from devkit.synthetic import build_synthetic_checkpoint, build_synthetic_whisper
from model_store.convert import ConversionRequest, run_conversion
from model_store.progress import Progress
from model_store.store import ModelEntry, ModelStore

T = TypeVar("T")


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


def _once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """``build(directory)``, done once for the whole run: alone, in a directory of this session; under xdist, by
    the first worker to get here, in a directory of the run all workers share, its result kept beside it for the
    others (which wait on a lock meanwhile)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent
    result = shared / f"{name}.pickle"
    with (shared / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            directory = shared / name
            directory.mkdir(exist_ok=True)
            result.write_bytes(pickle.dumps(build(directory)))
        return pickle.loads(result.read_bytes())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _once_per_run(
        tmp_path_factory, "ckpt", lambda directory: build_synthetic_checkpoint(directory / "tiny-phi3v", "tiny")
    )


@dataclass(frozen=True)
class Converted:
    """A conversion of the tiny checkpoint, and what it showed while it ran."""

    store: ModelStore
    entry: ModelEntry
    progress: tuple[Progress, ...] = ()  # what run_conversion reported, for one run in this process
    stdout: str = ""  # what ``phi3bot convert`` printed, for one run by the command
    stderr: str = ""


@pytest.fixture(scope="session")
def int4_conversion(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Converted:
    """The tiny checkpoint converted to INT4 and made the active model by ``phi3bot convert``, as an operator does
    it (the command converts in a process of its own, as the bot does)."""

    def convert(directory: Path) -> Converted:
        environment = {**os.environ, "MODEL_STORE_DIR": str(directory / "store"), "DATA_DIR": str(directory)}
        arguments = ["convert", "--model", str(tiny_checkpoint), "--precision", "int4"]
        done = run_phi3bot(arguments, environment, directory)
        assert done.returncode == 0, done.stderr[-3000:]
        store = ModelStore(directory / "store")
        active = store.active()
        entry = store.entry(active.slug, active.precision) if active is not None else None
        assert entry is not None, done.stdout
        return Converted(store, entry, stdout=done.stdout, stderr=done.stderr)

    return _once_per_run(tmp_path_factory, "int4", convert)


@pytest.fixture(scope="session")
def int4_store(int4_conversion: Converted) -> tuple[ModelStore, ModelEntry]:
    return int4_conversion.store, int4_conversion.entry


def _converted_here(
    tmp_path_factory: pytest.TempPathFactory,
    checkpoint: Path,
    name: str,
    precision: str | None,
    *,
    activate: bool = False,
) -> Converted:
    """``precision``: None for the kind's own."""

    def convert(root: Path) -> Converted:
        updates: list[Progress] = []
        request = ConversionRequest(
            source=str(checkpoint), store_root=str(root), precision=precision, activate=activate
        )
        entry = run_conversion(request, updates.append)
        return Converted(ModelStore(root), entry, progress=tuple(updates))

    return _once_per_run(tmp_path_factory, name, convert)


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _once_per_run(
        tmp_path_factory, "whisper", lambda directory: build_synthetic_whisper(directory / "tiny-whisper", "tiny")
    )


@pytest.fixture(scope="session")
def speech_conversion(tmp_path_factory: pytest.TempPathFactory, tiny_whisper: Path) -> Converted:
    """The tiny Whisper checkpoint converted as a speech model (INT8, its default) and chosen as its store's speech
    model, in this process."""
    return _converted_here(tmp_path_factory, tiny_whisper, "speech", None, activate=True)


@pytest.fixture(scope="session")
def voice_store(
    tmp_path_factory: pytest.TempPathFactory, int4_conversion: Converted, speech_conversion: Converted
) -> Path:
    """A store holding the INT4 vision model and the speech model, each the one chosen: what a bot that hears
    serves.  Its models are hard links to the other fixtures' (read-only like them)."""

    def build(directory: Path) -> Path:
        root = directory / "store"
        shutil.copytree(int4_conversion.store.root, root, symlinks=True, copy_function=os.link)
        speech = speech_conversion.entry
        shutil.copytree(speech.path.parent, root / speech.slug, symlinks=True, copy_function=os.link)
        ModelStore(root).set_active(speech)
        return root

    return _once_per_run(tmp_path_factory, "voice-store", build)


@pytest.fixture(scope="session")
def int8_conversion(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Converted:
    return _converted_here(tmp_path_factory, tiny_checkpoint, "int8", "int8")


@pytest.fixture(scope="session")
def fp16_conversion(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Converted:
    return _converted_here(tmp_path_factory, tiny_checkpoint, "fp16", "fp16")


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
