"""The synthetic checkpoint on the stand-in Hub as Microsoft's repositories hold theirs: its config.json names the
Hub repository of its CLIP vision tower (``img_processor.model_name``) instead of a directory on this machine."""

from __future__ import annotations

import json
from pathlib import Path

from devkit.hub_server import StandInHub
from devkit.synthetic.builder import CLIP_DIR_NAME

CLIP_REPO = "openai/clip-vit-large-patch14-336"


def push_clip(hub: StandInHub, checkpoint: Path, repo_id: str = CLIP_REPO) -> str:
    """The CLIP configuration of ``checkpoint`` as a repository of its own; its sha."""
    return hub.push(repo_id, {"config.json": (checkpoint / CLIP_DIR_NAME / "config.json").read_bytes()})


def push_phi3v(
    hub: StandInHub, repo_id: str, checkpoint: Path, clip_repo: str = CLIP_REPO, files: dict[str, bytes] | None = None
) -> str:
    """``checkpoint`` naming ``clip_repo`` for its image processor, with ``files`` replaced or added; its sha."""
    contents = {
        str(path.relative_to(checkpoint)): path.read_bytes()
        for path in sorted(checkpoint.rglob("*"))
        if path.is_file() and CLIP_DIR_NAME not in path.relative_to(checkpoint).parts
    }
    config = json.loads(contents["config.json"])
    config["img_processor"]["model_name"] = clip_repo
    contents["config.json"] = json.dumps(config, indent=2).encode()
    return hub.push(repo_id, {**contents, **(files or {})})
