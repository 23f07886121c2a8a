"""Hugging Face checkpoint to OpenVINO IR, then NNCF weight compression: the heavy part, run in a child process.

Export goes through optimum-intel (its ``phi3_v`` support splits the model into the four sub-models OpenVINO
GenAI expects and converts the tokenizer), in a process of its own, as it runs the checkpoint's code: offline,
without a token, confined to its own work (``_confinement``), and ended with the conversion's.  Compression
follows OpenVINO's Phi-3-vision notebook: the language model gets INT4_SYM with group size 64 on a ratio of 0.6
of its layers (the rest INT8), the smaller sub-models INT8; ``int8`` compresses everything to INT8; ``fp16`` and
``fp32`` keep the exported weights.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from model_store.child_start import OPENVINO_TELEMETRY, Confinement, die_with, modules_cache, runtime_readable
from model_store.convert.heartbeat import Heartbeat
from model_store.errors import ConversionFailedError
from model_store.layout import KINDS, SIDE_FILES, SPEECH, ModelKind
from model_store.progress import format_elapsed

log = logging.getLogger(__name__)


# The export loads what was pinned and staged, and nothing else (pins.py); its process has no token.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

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


def _allow_whisper_on_this_transformers() -> None:
    """optimum-intel 2.2.0 asks transformers 4.57 of every model whose export names no range of its own, Whisper's
    included, while its Phi-3-vision export takes 4.53.3 at most (pyproject.toml pins that).  Whisper's export runs
    on 4.53: tests/test_speech_conversion.py holds what it gives to transformers' own transcription."""
    from optimum.exporters.openvino.model_configs import WhisperOpenVINOConfig

    WhisperOpenVINOConfig.MIN_TRANSFORMERS_VERSION = "4.51.0"


def _export_here(checkpoint: Path, output: Path, precision: str, kind: ModelKind) -> None:
    """The export itself, in the export's own process (``main``)."""
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    _quiet_libraries()
    if kind is SPEECH:
        _allow_whisper_on_this_transformers()
    # optimum collects garbage after each part; with torch and transformers imported, each collection walks
    # millions of their objects, which nothing frees: frozen, they are left out of every collection.
    gc.freeze()
    main_export(
        str(checkpoint),
        output,
        task=kind.export_task,
        trust_remote_code=kind.runs_code,
        ov_config=OVConfig(dtype="fp32" if precision == "fp32" else "fp16"),
        convert_tokenizer=True,
    )


def _offline_environment() -> dict[str, str]:
    """This process's environment without a Hugging Face token, offline, and able to import this package."""
    environment = {name: value for name, value in os.environ.items() if name.upper() not in TOKEN_VARIABLES}
    package_root = str(Path(__file__).resolve().parents[2])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, environment.get("PYTHONPATH"))))
    return {**environment, **OFFLINE}


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """A SIGTERM (how a conversion is stopped: process.py) ends this process through its ``finally`` blocks,
    which end the export's process too, instead of at once, which would leave that one running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def export_checkpoint(checkpoint: Path, output: Path, precision: str, kind: ModelKind, report: Report) -> None:
    """Write the uncompressed IR (FP16, or FP32 when asked) with tokenizers into ``output``.

    The export runs the checkpoint's Python code (``trust_remote_code``, for a kind that has some), in a process of
    its own that is
    offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE): whatever that code or the libraries would fetch beyond the
    pinned files staged in ``checkpoint`` (pins.py) fails instead, and no Hugging Face token is in its
    environment."""
    expected = len(kind.submodels)

    def tick(elapsed: float) -> None:
        written = sum(1 for name in kind.submodels if (output / f"{name}.xml").exists())
        report(written / expected, f"{written} of {expected} parts written, {format_elapsed(elapsed)}")

    with tempfile.TemporaryDirectory(prefix="phi3bot-export-") as notes:
        failure = Path(notes) / "failure"
        command = [
            sys.executable,
            "-m",
            __name__,
            str(os.getpid()),
            str(checkpoint),
            str(output),
            precision,
            kind.name,
            str(failure),
        ]
        with _sigterm_unwinds(), Heartbeat(tick):
            export = subprocess.Popen(command, env=_offline_environment())
            try:
                code = export.wait()
            finally:
                if export.poll() is None:
                    export.kill()
                    export.wait()
        if code != 0:
            if failure.is_file():
                raise ConversionFailedError("export_failed", error=failure.read_text(encoding="utf-8"))
            raise ConversionFailedError("export_ended", exitcode=code)
    for name in SIDE_FILES:
        if (checkpoint / name).is_file() and not (output / name).exists():
            shutil.copyfile(checkpoint / name, output / name)
    report(1.0, "exported")


def compress(output: Path, precision: str, kind: ModelKind, report: Report, *, group_size: int, ratio: float) -> None:
    """Compress the weights of each sub-model in place, largest first so the percentage moves honestly."""
    if precision not in ("int4", "int8"):
        report(1.0, "no compression for " + precision)
        return
    import nncf
    import openvino as ov

    core = ov.Core()
    sizes = {name: (output / f"{name}.bin").stat().st_size for name in kind.compressible}
    total = sum(sizes.values())
    done = 0
    for name in sorted(kind.compressible, key=lambda n: -sizes[n]):
        label = name.removeprefix("openvino_").removesuffix("_model").replace("_", " ") + " model"

        def tick(elapsed: float, label: str = label, done: int = done) -> None:
            report(done / total, f"compressing the {label}, {format_elapsed(elapsed)}")

        with Heartbeat(tick, interval=5.0):
            model = core.read_model(output / f"{name}.xml")
            if precision == "int4" and name == kind.int4_part:
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


def _confinement(view: Path, output: Path) -> Confinement:
    """The export runs the repository's code, so it gets a Landlock layer of its own on top of the conversion's:
    it reads its staged view and what the view links to (the checkpoint, the pinned copies in Hugging Face's
    cache), writes only its output, transformers' copy of the code and its temporary files, and opens no
    connection.  Nested in its own layer, it cannot trace the conversion's process either (nor read its memory,
    which holds the Hub token)."""
    from huggingface_hub import constants

    linked = {item.resolve() for item in view.iterdir()}
    readable = {str(view), constants.HF_HUB_CACHE, *(str(p if p.is_dir() else p.parent) for p in linked)}
    return Confinement(
        readable=(*sorted(readable), OPENVINO_TELEMETRY, *runtime_readable()),
        writable=(str(output), modules_cache(), tempfile.gettempdir(), "/dev/shm"),  # noqa: S108 (semaphores)
    )


def main(arguments: list[str]) -> int:
    """The export's process: ``PARENT CHECKPOINT OUTPUT PRECISION KIND FAILURE_FILE``; it dies with the
    conversion's process (``PARENT``), which dies with the bot; a failure's reason goes to the file."""
    parent, checkpoint, output, precision, kind_name, failure = arguments
    [kind] = [kind for kind in KINDS if kind.name == kind_name]
    die_with(int(parent))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s export: %(message)s")
    try:
        with _confinement(Path(checkpoint), Path(output)).entered():
            _export_here(Path(checkpoint), Path(output), precision, kind)
    except Exception as error:
        log.exception("the export failed")
        Path(failure).write_text(f"{type(error).__name__}: {error}", encoding="utf-8")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
