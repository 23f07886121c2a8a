"""Hugging Face checkpoint to OpenVINO IR, then NNCF weight compression: the heavy part, run in a child process.

Export goes through optimum-intel (its ``phi3_v`` support splits the model into the four sub-models OpenVINO
GenAI expects and converts the tokenizer).  Compression follows OpenVINO's Phi-3-vision notebook: the
language model gets INT4_SYM with group size 64 on a ratio of 0.6 of its layers (the rest INT8), the smaller
sub-models INT8; ``int8`` compresses everything to INT8; ``fp16`` and ``fp32`` keep the exported weights.
"""

from __future__ import annotations

import gc
import logging
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

from model_store.convert.heartbeat import Heartbeat, format_elapsed
from model_store.layout import SIDE_FILES, SUBMODELS

log = logging.getLogger(__name__)

INT4_DEFAULTS = {"group_size": 64, "ratio": 0.6}
LANGUAGE_MODEL = "openvino_language_model"
COMPRESSIBLE = (
    "openvino_language_model",
    "openvino_text_embeddings_model",
    "openvino_vision_embeddings_model",
    "openvino_vision_projection_model",
)

Report = Callable[[float, str], None]


def _quiet_libraries() -> None:
    """Tracing prints hundreds of warnings that mean nothing to the person converting."""
    warnings.filterwarnings("ignore")
    for name in ("transformers", "optimum", "nncf", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def export_checkpoint(checkpoint: Path, output: Path, precision: str, report: Report) -> None:
    """Write the uncompressed IR (FP16, or FP32 when asked) with tokenizers into ``output``."""
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    _quiet_libraries()
    expected = len(SUBMODELS)

    def tick(elapsed: float) -> None:
        written = sum(1 for name in SUBMODELS if (output / f"{name}.xml").exists())
        report(written / expected, f"{written} of {expected} parts written, {format_elapsed(elapsed)}")

    with Heartbeat(tick):
        main_export(
            str(checkpoint),
            output,
            task="image-text-to-text",
            trust_remote_code=True,
            ov_config=OVConfig(dtype="fp32" if precision == "fp32" else "fp16"),
            convert_tokenizer=True,
        )
    gc.collect()
    for name in SIDE_FILES:
        if (checkpoint / name).is_file() and not (output / name).exists():
            shutil.copyfile(checkpoint / name, output / name)
    report(1.0, "exported")


def compress(output: Path, precision: str, report: Report, *, group_size: int, ratio: float) -> None:
    """Compress the weights of each sub-model in place, largest first so the percentage moves honestly."""
    if precision not in ("int4", "int8"):
        report(1.0, "no compression for " + precision)
        return
    import nncf
    import openvino as ov

    core = ov.Core()
    sizes = {name: (output / f"{name}.bin").stat().st_size for name in COMPRESSIBLE}
    total = sum(sizes.values())
    done = 0
    for name in sorted(COMPRESSIBLE, key=lambda n: -sizes[n]):
        label = "language model" if name == LANGUAGE_MODEL else name.removeprefix("openvino_").replace("_", " ")

        def tick(elapsed: float, label: str = label, done: int = done) -> None:
            report(done / total, f"compressing the {label}, {format_elapsed(elapsed)}")

        with Heartbeat(tick, interval=5.0):
            model = core.read_model(output / f"{name}.xml")
            if precision == "int4" and name == LANGUAGE_MODEL:
                compressed = nncf.compress_weights(
                    model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=group_size, ratio=ratio
                )
            else:
                compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            temporary = output / f"{name}.compressed.xml"
            ov.save_model(compressed, temporary, compress_to_fp16=True)
            del model, compressed
            gc.collect()
        temporary.replace(output / f"{name}.xml")
        temporary.with_suffix(".bin").replace(output / f"{name}.bin")
        done += sizes[name]
        report(done / total, f"compressed the {label}")
