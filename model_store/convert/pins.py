"""Everything a conversion reads, each Hub repository at one commit: found before anyone confirms, loaded offline.

Besides the checkpoint, optimum-intel's Phi-3-vision export loads the configuration of the repository named in
config.json's ``img_processor.model_name`` (the CLIP vision tower: ``openai/clip-vit-large-patch14-336`` for
Microsoft's checkpoints), by name and with ``trust_remote_code``; left alone, it would fetch that repository at
its latest commit, whatever was confirmed.  So that repository is pinned like the checkpoint, named in the
confirmation and downloaded first, and the export reads a staged view of the checkpoint whose config.json
names the local copy of the pinned commit instead (the export itself runs offline: export.py).

Code runs from the checkpoint alone: an ``auto_map`` entry that loads a class from another repository
(``other/repo--module.Class``) is refused, and so is any ``auto_map`` in a repository the checkpoint names,
which is read for its configuration only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_store.convert import hub
from model_store.errors import CorruptModelError, UntrustedCodeError
from model_store.layout import read_json
from model_store.sources import ModelSource, is_repo_id

CONFIG = "config.json"


@dataclass(frozen=True)
class Pins:
    """The checkpoint's commit (None for a local directory) and those of the repositories its configuration
    names, in the order it names them."""

    checkpoint: hub.Snapshot | None
    named: tuple[hub.Snapshot, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)  # the checkpoint's config.json, read before any weight

    @property
    def named_revisions(self) -> dict[str, str]:
        """What a confirmation gives a conversion (``ConversionRequest.named_revisions``)."""
        return {other.repo_id: other.revision for other in self.named}

    @property
    def revisions(self) -> dict[str, str]:
        """Repository to commit, the checkpoint's first: what the model's manifest records."""
        checkpoint = {self.checkpoint.repo_id: self.checkpoint.revision} if self.checkpoint else {}
        return {**checkpoint, **self.named_revisions}


def _auto_map_entries(directory: Path) -> list[str]:
    """The classes the configuration files of ``directory`` ask transformers to load from code
    (``module.Class``, or ``repo--module.Class`` for another repository's)."""
    entries: list[str] = []
    for path in sorted(directory.glob("*.json")):
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # a broken config.json is reported when the checkpoint is checked; others are not loaded
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        for value in auto_map.values() if isinstance(auto_map, dict) else ():
            entries += [entry for entry in (value if isinstance(value, list) else [value]) if isinstance(entry, str)]
    return entries


def refuse_code_from_elsewhere(directory: Path, name: str) -> None:
    """Raise :class:`UntrustedCodeError` if the checkpoint's configuration loads code from another repository:
    that code would be fetched at its latest commit, which nobody confirmed."""
    elsewhere = [entry for entry in _auto_map_entries(directory) if "--" in entry]
    if elsewhere:
        raise UntrustedCodeError("code_from_elsewhere", name=name, entries=elsewhere)


def _refuse_code(directory: Path, name: str, named_by: str) -> None:
    entries = _auto_map_entries(directory)
    if entries:
        raise UntrustedCodeError("processor_code", name=name, named_by=named_by, entries=entries)


def named_repositories(config: dict[str, Any], name: str, from_hub: bool) -> list[str]:
    """The Hub repositories ``config`` (the checkpoint's config.json) makes the export load.  A local checkpoint
    may name a directory on this machine instead (a synthetic checkpoint names its own CLIP configuration)."""
    processor = config.get("img_processor")
    model_name = processor.get("model_name") if isinstance(processor, dict) else None
    if not model_name:
        return []
    if isinstance(model_name, str):
        if not from_hub and Path(model_name).expanduser().is_dir():
            return []
        if is_repo_id(model_name):
            return [model_name]
    raise CorruptModelError("bad_processor", name=name, processor=model_name, from_hub=from_hub)


def resolve(source: ModelSource, revision: str | None, confirmed: Mapping[str, str], token: str | None = None) -> Pins:
    """Pin the checkpoint (at ``revision``, or its latest commit) and each repository it names (at the commit
    ``confirmed`` gives, or its latest), reading only their configuration files; raises if code would come
    from elsewhere."""
    pinned: hub.Snapshot | None = None
    if source.repo_id is not None:
        pinned = hub.snapshot(source.repo_id, hub.CHECKPOINT_PATTERNS, revision, token)
        configs = hub.download(pinned, hub.CONFIG_PATTERNS, token=token)
    else:
        assert source.local_dir is not None
        configs = source.local_dir
    refuse_code_from_elsewhere(configs, source.display)
    config = read_json(configs / CONFIG)
    named: list[hub.Snapshot] = []
    for repo_id in named_repositories(config, source.display, pinned is not None):
        other = hub.snapshot(repo_id, hub.CONFIG_PATTERNS, confirmed.get(repo_id), token)
        _refuse_code(hub.download(other, hub.CONFIG_PATTERNS, token=token), repo_id, source.display)
        named.append(other)
    return Pins(pinned, tuple(named), config)


def stage(checkpoint: Path, named: Mapping[str, Path], into: Path) -> Path:
    """A view of ``checkpoint`` for the export in ``into``: links to its files, and a copy of config.json that
    names each repository by the path of its pinned copy (``named``), so the export finds it offline, at the
    commit pinned.  The checkpoint's own files, which may be links into the shared Hugging Face cache, are not
    changed."""
    for item in checkpoint.iterdir():
        if item.name != CONFIG:
            (into / item.name).symlink_to(item.absolute())
    config = read_json(checkpoint / CONFIG)
    processor = config.get("img_processor")
    if isinstance(processor, dict) and processor.get("model_name") in named:
        config["img_processor"] = {**processor, "model_name": str(named[processor["model_name"]])}
    (into / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return into
