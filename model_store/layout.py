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
        raise MissingModelError(f"{path} is missing.") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptModelError(f"{path} is not valid JSON ({error}). Convert or download the model again.") from error
    if not isinstance(data, dict):
        raise CorruptModelError(f"{path} should hold a JSON object. Convert or download the model again.")
    return data


def check_ir_directory(directory: Path) -> dict[str, Any]:
    """Raise a clear error unless ``directory`` holds a complete Phi-3-vision OpenVINO model; return its config."""
    if not directory.is_dir():
        raise MissingModelError(
            f"No converted model at {directory}. Convert one first, e.g. "
            "`phi3bot convert --model microsoft/Phi-3.5-vision-instruct --precision int4`."
        )
    config = read_json(directory / "config.json")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CorruptModelError(
            f"{directory / 'config.json'} says model_type={model_type!r}; this bot runs Phi-3-vision models (phi3_v)."
        )
    read_json(directory / "preprocessor_config.json")
    missing = [
        f"{name}{suffix}"
        for name in SUBMODELS
        for suffix in (".xml", ".bin")
        if not (directory / f"{name}{suffix}").is_file()
    ]
    if missing:
        raise CorruptModelError(
            f"The model in {directory} is incomplete: {', '.join(missing)} missing. Convert it again."
        )
    for key in ("glb_GN", "sub_GN"):
        values = config.get(key)
        if not isinstance(values, list):
            raise CorruptModelError(f"{directory / 'config.json'} lacks {key}; it was not exported for OpenVINO GenAI.")
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
