"""What a converted model directory must contain for OpenVINO GenAI, by the kind of model it holds.

The store holds two kinds of model: the vision model that answers (Phi-3-vision, for GenAI's VLMPipeline) and
the speech model that turns voice messages into questions (Whisper, for GenAI's WhisperPipeline).  The kind is
read from config.json's ``model_type`` and decides how a checkpoint is exported and compressed, how the result is
checked and validated, and which of the store's two active choices it can be.  A directory is checked before GenAI
sees it, because GenAI's own errors for a missing file or a broken config are C++ assertion texts that tell a
person little.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store.errors import CorruptModelError, MissingModelError


@dataclass(frozen=True)
class ModelKind:
    name: str  # "vision" or "speech"
    model_types: tuple[str, ...]  # config.json's model_type
    export_task: str  # optimum-intel's
    submodels: tuple[str, ...]  # the OpenVINO models GenAI loads (.xml and .bin each)
    compressible: tuple[str, ...]  # the parts whose weights NNCF compresses, the largest usually first
    int4_part: str | None  # the one part INT4 applies to (the others get INT8); None: no INT4 for this kind
    default_precision: str
    runs_code: bool  # the export runs the checkpoint's own Python code (trust_remote_code)


VISION = ModelKind(
    name="vision",
    model_types=("phi3_v",),
    export_task="image-text-to-text",
    submodels=(
        "openvino_language_model",
        "openvino_text_embeddings_model",
        "openvino_vision_embeddings_model",
        "openvino_vision_projection_model",
        "openvino_tokenizer",
        "openvino_detokenizer",
    ),
    compressible=(
        "openvino_language_model",
        "openvino_text_embeddings_model",
        "openvino_vision_embeddings_model",
        "openvino_vision_projection_model",
    ),
    int4_part="openvino_language_model",
    default_precision="int4",
    runs_code=True,  # Phi-3-vision's modelling code is the checkpoint's, not transformers'
)
# Whisper: INT8 weights keep its accuracy (OpenVINO's Whisper notebooks); the decoder is stateful, with its cache.
SPEECH = ModelKind(
    name="speech",
    model_types=("whisper",),
    export_task="automatic-speech-recognition-with-past",
    submodels=("openvino_encoder_model", "openvino_decoder_model", "openvino_tokenizer", "openvino_detokenizer"),
    compressible=("openvino_encoder_model", "openvino_decoder_model"),
    int4_part=None,
    default_precision="int8",
    runs_code=False,
)
KINDS = (VISION, SPEECH)
# Small files that describe a checkpoint and that the exporter does not always carry over.
SIDE_FILES = ("preprocessor_config.json", "processor_config.json", "generation_config.json", "synthetic.json")


def kind_of(config: dict[str, Any], config_path: Path) -> ModelKind:
    """The kind of model ``config`` (read from ``config_path``) describes; raises for any other model."""
    model_type = config.get("model_type")
    for kind in KINDS:
        if model_type in kind.model_types:
            return kind
    raise CorruptModelError("unsupported_model_type", config=str(config_path), model_type=model_type)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise MissingModelError("file_missing", path=str(path)) from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptModelError("bad_json", path=str(path), error=str(error)) from error
    if not isinstance(data, dict):
        raise CorruptModelError("not_an_object", path=str(path))
    return data


def check_ir_directory(directory: Path, wanted: ModelKind | None = None) -> ModelKind:
    """Raise a clear error unless ``directory`` holds a complete converted model (of the ``wanted`` kind, where one
    is wanted); return its kind."""
    if not directory.is_dir():
        raise MissingModelError("no_model_at", directory=str(directory))
    config = read_json(directory / "config.json")
    kind = kind_of(config, directory / "config.json")
    if wanted is not None and kind is not wanted:
        raise CorruptModelError(
            "wrong_kind", config=str(directory / "config.json"), model_type=config.get("model_type"), wanted=wanted.name
        )
    read_json(directory / "preprocessor_config.json")
    missing = [
        f"{name}{suffix}"
        for name in kind.submodels
        for suffix in (".xml", ".bin")
        if not (directory / f"{name}{suffix}").is_file()
    ]
    if missing:
        raise CorruptModelError("incomplete", directory=str(directory), missing=missing)
    if kind is VISION:
        for key in ("glb_GN", "sub_GN"):
            if not isinstance(config.get(key), list):
                raise CorruptModelError("not_for_genai", config=str(directory / "config.json"), key=key)
    return kind


_ELEMENT_TYPE = re.compile(rb'element_type="([a-z0-9]+)"')


def detect_weight_precision(directory: Path, kind: ModelKind = VISION) -> str:
    """The weight format of a converted model's largest part, read from its IR (for models converted elsewhere)."""
    xml = (directory / f"{kind.compressible[0]}.xml").read_bytes()
    types = set(_ELEMENT_TYPE.findall(xml))
    if types & {b"u4", b"i4", b"nf4"}:
        return "int4"
    if types & {b"u8", b"i8"}:
        return "int8"
    if b"f16" in types:
        return "fp16"
    return "fp32"
