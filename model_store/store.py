"""The on-disk model store: converted models, the active choice, and atomic replacement.

Layout under the store root::

    <slug>/<precision>              symlink to the live version of that model and precision
    <slug>/.<precision>-<stamp>/    an immutable converted model (OpenVINO IR + manifest.json)
    .staging/<id>/                  work directories of conversions in progress
    active.json                     the vision model chosen with /convert or ``phi3bot convert`` (activated)
    active-speech.json              the speech model chosen the same way
    convert.lock                    held by the one conversion allowed at a time

A model is replaced by renaming a new symlink over the old one, which is atomic on POSIX: a reader sees the
old model or the new one, never a half-written directory, and a conversion that fails or is killed leaves
the live symlink untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from model_store.errors import BusyError, CorruptModelError
from model_store.layout import VISION
from model_store.sources import PRECISIONS

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ACTIVE = "active.json"
STAGING = ".staging"


@dataclass(frozen=True)
class ModelEntry:
    slug: str
    precision: str
    path: Path
    manifest: dict[str, Any]

    @property
    def source(self) -> str:
        return str(self.manifest.get("source", self.slug))

    @property
    def revision(self) -> str | None:
        """The Hub commit converted (pinned when the conversion started); None for a local directory."""
        return self.manifest.get("revision")

    @property
    def kind(self) -> str:
        """The kind of model, "vision" or "speech" (layout.py); a model converted before there were kinds is a
        vision model."""
        return str(self.manifest.get("kind", VISION.name))

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic", False))

    @property
    def size_bytes(self) -> int:
        return int(self.manifest.get("size_bytes", 0))


@dataclass(frozen=True)
class Selection:
    slug: str
    precision: str
    source: str


def directory_size(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STAGING).mkdir(exist_ok=True)

    # --- reading -------------------------------------------------------------------------------------------

    def entry(self, slug: str, precision: str) -> ModelEntry | None:
        link = self.root / slug / precision
        if not link.exists():
            return None
        target = link.resolve()
        try:
            manifest = json.loads((target / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise CorruptModelError(
                "bad_manifest", directory=str(target), manifest=MANIFEST, error=str(error)
            ) from error
        return ModelEntry(slug=slug, precision=precision, path=target, manifest=manifest)

    def entries(self) -> list[ModelEntry]:
        found: list[ModelEntry] = []
        if not self.root.is_dir():
            return found
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for precision in PRECISIONS:
                with contextlib.suppress(CorruptModelError):
                    entry = self.entry(model_dir.name, precision)
                    if entry is not None:
                        found.append(entry)
        return found

    def _active_file(self, kind: str) -> Path:
        return self.root / (ACTIVE if kind == VISION.name else f"active-{kind}.json")

    def active(self, kind: str = VISION.name) -> Selection | None:
        """The model of ``kind`` chosen last, if any."""
        path = self._active_file(kind)
        try:
            data = json.loads(path.read_text())
            return Selection(slug=data["slug"], precision=data["precision"], source=data.get("source", data["slug"]))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring unreadable %s; the configured model is used instead", path)
            return None

    # --- writing -------------------------------------------------------------------------------------------

    def set_active(self, entry: ModelEntry) -> None:
        data = {
            "slug": entry.slug,
            "precision": entry.precision,
            "source": entry.source,
            "selected_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self._write_atomically(self._active_file(entry.kind), json.dumps(data, indent=2) + "\n")

    @contextlib.contextmanager
    def conversion_lock(self) -> Iterator[None]:
        """One conversion at a time: two would compete for memory and for the same staging space."""
        self.ensure()
        with (self.root / "convert.lock").open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise BusyError("busy") from error
            try:
                self._clean_staging()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def new_staging_dir(self) -> Path:
        self.ensure()
        path = self.root / STAGING / uuid.uuid4().hex
        path.mkdir()
        return path

    def install(self, staging: Path, slug: str, precision: str, manifest: dict[str, Any]) -> ModelEntry:
        """Move a validated model into place and switch the live symlink to it in one rename."""
        manifest = {**manifest, "size_bytes": directory_size(staging)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        model_dir = self.root / slug
        model_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:6]}"
        version = model_dir / f".{precision}-{stamp}"
        staging.rename(version)
        link = model_dir / precision
        previous = link.resolve() if link.is_symlink() else None
        temporary_link = model_dir / f".{precision}.link-{uuid.uuid4().hex[:6]}"
        temporary_link.symlink_to(version.name)
        temporary_link.replace(link)
        if previous is not None and previous != version and previous.parent == model_dir:
            # Safe while a pipeline still uses it: OpenVINO has read (or mapped) the files, and POSIX keeps
            # unlinked files alive until they are closed.
            shutil.rmtree(previous, ignore_errors=True)
        log.info("installed %s (%s) at %s", slug, precision, version)
        return ModelEntry(slug=slug, precision=precision, path=version, manifest=manifest)

    def _clean_staging(self) -> None:
        """Remove what killed or failed conversions left behind (only called while holding the lock)."""
        for leftover in (self.root / STAGING).iterdir():
            log.info("removing leftover conversion directory %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    @staticmethod
    def _write_atomically(path: Path, text: str) -> None:
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
        temporary.write_text(text)
        temporary.replace(path)
