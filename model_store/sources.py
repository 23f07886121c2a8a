"""What a person can name as a model: a Hugging Face repository id or a local checkpoint directory."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from model_store.errors import MissingModelError

PRECISIONS = ("int4", "int8", "fp16", "fp32")
# INT4's compression unless asked otherwise (OpenVINO's Phi-3-vision notebook; convert/export.py): weights in groups
# of 64, and that share of the language model's layers in INT4, the rest in INT8.
INT4_GROUP_SIZE = 64
INT4_RATIO = 0.6
KNOWN_SPEECH_MODELS = {"whisper-base": "openai/whisper-base", "whisper-small": "openai/whisper-small"}
KNOWN_MODELS = {
    "phi-3.5-vision": "microsoft/Phi-3.5-vision-instruct",
    "phi-3-vision-128k": "microsoft/Phi-3-vision-128k-instruct",
    **KNOWN_SPEECH_MODELS,  # for voice messages
}
# Converting a Phi-3-vision checkpoint runs the Python code it ships (its modelling code is not part of
# transformers); the known repositories' code is Microsoft's, any other needs the admin's confirmation.  A Whisper
# checkpoint's export runs transformers' own code only.
TRUSTED_REPOSITORIES = frozenset(repo.lower() for repo in KNOWN_MODELS.values())
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from; ``slug`` names the model's folder in the store."""

    ref: str
    repo_id: str | None = None
    local_dir: Path | None = None

    @property
    def slug(self) -> str:
        if self.repo_id is not None:
            return self.repo_id.replace("/", "--")
        assert self.local_dir is not None
        digest = hashlib.sha256(str(self.local_dir).encode()).hexdigest()[:8]
        return f"local--{self.local_dir.name}-{digest}"

    @property
    def display(self) -> str:
        return self.repo_id or str(self.local_dir)

    @property
    def vouched_for(self) -> bool:
        """A directory on the bot's own disk was put there by whoever runs it; of the Hub's repositories only
        the known Phi-3-vision ones are."""
        return self.repo_id is None or self.repo_id.lower() in TRUSTED_REPOSITORIES


def is_repo_id(ref: str) -> bool:
    """Spelled as a Hugging Face repository id (owner/name), not as a path."""
    return bool(_REPO_ID.match(ref)) and not ref.startswith((".", "/", "~"))


def parse_source(ref: str) -> ModelSource:
    """An existing directory wins over a repository id with the same spelling, as in transformers."""
    ref = ref.strip()
    if not ref:
        raise MissingModelError("no_model_given")
    ref = KNOWN_MODELS.get(ref.lower(), ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        return ModelSource(ref=ref, local_dir=path.resolve())
    if is_repo_id(ref):
        return ModelSource(ref=ref, repo_id=ref)
    raise MissingModelError("not_a_source", ref=ref)


def parse_precision(value: str) -> str:
    precision = value.strip().lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {value!r}; choose one of {', '.join(PRECISIONS)}")
    return precision
