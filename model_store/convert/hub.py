"""Hugging Face Hub access with errors a person can act on and byte-level download progress."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from model_store.convert.heartbeat import Heartbeat, format_elapsed
from model_store.errors import GatedModelError, ModelNotFoundError, ModelStoreError, NoNetworkError

log = logging.getLogger(__name__)

CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
IR_PATTERNS = ["*.xml", "*.bin", "*.json", "*.txt", "*.jinja", "*.py"]


def _translate(repo_id: str, error: Exception) -> ModelStoreError:
    if isinstance(error, GatedRepoError):
        return GatedModelError(
            f"{repo_id} is gated: accept its licence on its Hugging Face page and set HF_TOKEN to a token of "
            "that account."
        )
    if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)):
        return ModelNotFoundError(
            f"{repo_id} was not found on the Hugging Face Hub (or is private: set HF_TOKEN). Check the spelling."
        )
    if isinstance(error, (LocalEntryNotFoundError, requests.ConnectionError, requests.Timeout)):
        return NoNetworkError(
            f"Could not reach the Hugging Face Hub to get {repo_id}, and it is not in the local cache. "
            "Check the network (or a proxy), or pass a local checkpoint directory instead."
        )
    if isinstance(error, HfHubHTTPError):
        return ModelStoreError(f"The Hugging Face Hub refused {repo_id}: {error}")
    return ModelStoreError(f"Could not get {repo_id}: {error}")


@dataclass(frozen=True)
class Snapshot:
    """One commit of a repository: what a download fetches is pinned to ``revision``, so the files converted
    are the ones checked (and, for code nobody vouched for, confirmed) before, whatever the branch says later."""

    repo_id: str
    revision: str
    size: int


def snapshot(repo_id: str, patterns: list[str], revision: str | None = None) -> Snapshot:
    """The commit ``revision`` names (the default branch's latest when None) and the bytes a download of
    ``patterns`` from it would fetch, for the disk check before starting."""
    from fnmatch import fnmatch

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as error:
        raise _translate(f"{repo_id} at revision {revision}" if revision else repo_id, error) from error
    if not info.sha:
        raise ModelStoreError(f"The Hugging Face Hub did not say which commit of {repo_id} it serves.")
    siblings = info.siblings or []
    has_safetensors = any(s.rfilename.endswith(".safetensors") for s in siblings)
    total = 0
    for sibling in siblings:
        name = sibling.rfilename
        if has_safetensors and name.endswith(".bin") and patterns is CHECKPOINT_PATTERNS:
            continue
        if any(fnmatch(name, pattern) for pattern in patterns):
            total += sibling.size or 0
    return Snapshot(repo_id, info.sha, total)


def _cached_bytes(repo_id: str) -> int:
    blobs = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "blobs"
    if not blobs.is_dir():
        return 0
    return sum(item.stat().st_size for item in blobs.iterdir() if item.is_file())


def download(pinned: Snapshot, patterns: list[str], on_fraction: Callable[[float, str], None]) -> Path:
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
            path = snapshot_download(repo_id, revision=pinned.revision, allow_patterns=patterns)
    except Exception as error:
        raise _translate(repo_id, error) from error
    on_fraction(1.0, "downloaded")
    return Path(path)
