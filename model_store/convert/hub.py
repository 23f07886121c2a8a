"""Hugging Face Hub access: each repository read at one commit, every request bounded in time, errors a person
can act on (said by bot/texts.py), and byte-level download progress."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import requests
from huggingface_hub import HfApi, configure_http_backend, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from model_store.convert.heartbeat import Heartbeat
from model_store.errors import GatedModelError, ModelNotFoundError, ModelStoreError, NoNetworkError
from model_store.progress import format_elapsed

log = logging.getLogger(__name__)

CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
CONFIG_PATTERNS = ["*.json"]  # what is read before anyone confirms: configuration, never code or weights
IR_PATTERNS = ["*.xml", "*.bin", "*.json", "*.txt", "*.jinja", "*.py"]


class NoAnswer(requests.RequestException):
    """The Hub sent nothing within the time limit.  Not a ``requests.Timeout``, which huggingface_hub tries five
    more times with back-off (over three minutes at 30 s) or answers from whatever the cache holds."""


class _BoundedSession(requests.Session):
    """A session whose every request gives up after ``timeout`` seconds without a connection or without a byte:
    huggingface_hub's model and repository look-ups pass no timeout of their own."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["timeout"] = self.timeout
        try:
            return super().request(method, url, *args, **kwargs)
        except requests.Timeout as error:
            raise NoAnswer(f"no answer within {self.timeout:g} s") from error


_limit: float | None = None


def limit_waits(seconds: float) -> None:
    """Every Hub request of this process waits at most ``seconds`` to connect and between two bytes, so a Hub
    that accepts a connection and never answers cannot hold a look-up or a download for ever.  Xet transfers
    are turned off: their network code (hf_xet) is not bounded by this, and the Hub serves the same files over
    plain HTTPS.  An offline process (HF_HUB_OFFLINE) makes no requests and keeps huggingface_hub's refusals."""
    global _limit
    if _limit == seconds or constants.HF_HUB_OFFLINE:
        return
    constants.HF_HUB_DISABLE_XET = True
    configure_http_backend(lambda: _BoundedSession(seconds))
    _limit = seconds


def _timed_out(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, (NoAnswer, requests.Timeout)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _translate(repo_id: str, error: Exception, revision: str | None = None) -> ModelStoreError:
    if isinstance(error, GatedRepoError):
        return GatedModelError("gated", repo=repo_id, revision=revision)
    if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)):
        return ModelNotFoundError("not_found", repo=repo_id, revision=revision)
    if _timed_out(error):
        return NoNetworkError("hub_silent", repo=repo_id, revision=revision, seconds=_limit)
    if isinstance(error, (LocalEntryNotFoundError, requests.ConnectionError)):
        return NoNetworkError("hub_unreachable", repo=repo_id, revision=revision)
    if isinstance(error, HfHubHTTPError):
        return ModelStoreError("hub_refused", repo=repo_id, revision=revision, error=str(error))
    return ModelStoreError("hub_failed", repo=repo_id, revision=revision, error=str(error))


@dataclass(frozen=True)
class Snapshot:
    """One commit of a repository: what a download fetches is pinned to ``revision``, so the files converted
    are the ones checked (and, for code nobody vouched for, confirmed) before, whatever the branch says later."""

    repo_id: str
    revision: str
    size: int  # of the files below
    files: tuple[str, ...] = ()  # those a download of the patterns asked for fetches


def _matching(names: list[str] | tuple[str, ...], patterns: list[str]) -> list[str]:
    return [name for name in names if any(fnmatch(name, pattern) for pattern in patterns)]


def snapshot(repo_id: str, patterns: list[str], revision: str | None = None, token: str | None = None) -> Snapshot:
    """The commit ``revision`` names (the default branch's latest when None) and the bytes a download of
    ``patterns`` from it would fetch, for the disk check before starting."""
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, token=token or False)
    except Exception as error:
        raise _translate(repo_id, error, revision) from error
    if not info.sha:
        raise ModelStoreError("no_commit", repo=repo_id)
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    files = tuple(_matching(list(sizes), patterns))
    return Snapshot(repo_id, info.sha, sum(sizes[name] for name in files), files)


def _cached_bytes(repo_id: str) -> int:
    blobs = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "blobs"
    if not blobs.is_dir():
        return 0
    return sum(item.stat().st_size for item in blobs.iterdir() if item.is_file())


def _ignore_fraction(fraction: float, detail: str) -> None:
    """For downloads too small to report."""


def download(
    pinned: Snapshot,
    patterns: list[str],
    on_fraction: Callable[[float, str], None] = _ignore_fraction,
    token: str | None = None,
) -> Path:
    """Fetch (or reuse from the cache) the files of ``pinned``, reporting the fraction of bytes present.

    huggingface_hub reports byte progress only to its own bars, so progress is read from the cache folder.
    """
    repo_id, expected = pinned.repo_id, pinned.size
    baseline = _cached_bytes(repo_id)

    def tick(elapsed: float) -> None:
        done = max(_cached_bytes(repo_id) - baseline, 0)
        if expected:
            on_fraction(done / expected, f"{done / 1e9:.2f} of {expected / 1e9:.2f} GB, {format_elapsed(elapsed)}")

    try:
        with Heartbeat(tick, interval=1.0):
            path = snapshot_download(repo_id, revision=pinned.revision, allow_patterns=patterns, token=token or False)
    except Exception as error:
        raise _translate(repo_id, error) from error
    # A Hub that stops answering makes huggingface_hub fall back to whatever of the commit the cache holds.
    missing = [name for name in _matching(pinned.files, patterns) if not (Path(path) / name).is_file()]
    if missing:
        raise NoNetworkError("download_incomplete", repo=repo_id, missing=missing)
    on_fraction(1.0, "downloaded")
    return Path(path)
