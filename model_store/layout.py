"""What a converted Phi-3-vision model directory must contain for OpenVINO GenAI's VLMPipeline.

Checked before GenAI sees the directory, because GenAI's own errors for a missing file or a broken config
are C++ assertion texts that tell a person little.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from model_store.errors import CorruptModelError, MissingModelError

SUBMODELS = (
    "openvino_language_model",
    "openvino_text_embeddings_model",
    "openvino_vision_embeddings_model",
    "openvino_vision_projection_model",
    "openvino_tokenizer",
    "openvino_detokenizer",
)
SUPPORTED_MODEL_TYPES = ("phi3_v",)
# Small files that describe a checkpoint and that the exporter does not always carry over.
SIDE_FILES = ("preprocessor_config.json", "processor_config.json", "generation_config.json", "synthetic.json")


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


def check_ir_directory(directory: Path) -> dict[str, Any]:
    """Raise a clear error unless ``directory`` holds a complete Phi-3-vision OpenVINO model; return its config."""
    if not directory.is_dir():
        raise MissingModelError("no_model_at", directory=str(directory))
    config = read_json(directory / "config.json")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CorruptModelError("not_phi3_v_ir", config=str(directory / "config.json"), model_type=model_type)
    read_json(directory / "preprocessor_config.json")
    missing = [
        f"{name}{suffix}"
        for name in SUBMODELS
        for suffix in (".xml", ".bin")
        if not (directory / f"{name}{suffix}").is_file()
    ]
    if missing:
        raise CorruptModelError("incomplete", directory=str(directory), missing=missing)
    for key in ("glb_GN", "sub_GN"):
        values = config.get(key)
        if not isinstance(values, list):
            raise CorruptModelError("not_for_genai", config=str(directory / "config.json"), key=key)
    return config


_ELEMENT_TYPE = re.compile(rb'element_type="([a-z0-9]+)"')


def detect_weight_precision(directory: Path) -> str:
    """The weight format of a converted language model, read from its IR (for models converted elsewhere)."""
    xml = (directory / "openvino_language_model.xml").read_bytes()
    types = set(_ELEMENT_TYPE.findall(xml))
    if types & {b"u4", b"i4", b"nf4"}:
        return "int4"
    if types & {b"u8", b"i8"}:
        return "int8"
    if b"f16" in types:
        return "fp16"
    return "fp32"
