"""Conversion of the tiny synthetic checkpoint into the store, and OpenVINO GenAI running the result."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import openvino_genai as genai
import pytest

from bot.media.decoding import prepare_image
from engine.conversation import Turn
from engine.engine import Chunk, Engine, Finished
from engine.generation import GenerationSettings
from engine.pipeline_process import load_pipeline
from model_store.convert import ConversionRequest, convert_in_subprocess, run_conversion
from model_store.convert.validate import sample_image
from model_store.errors import (
    BusyError,
    ConversionFailedError,
    ConversionInterruptedError,
    CorruptModelError,
    InsufficientDiskError,
    InsufficientMemoryError,
    MissingModelError,
    ValidationFailedError,
)
from model_store.layout import detect_weight_precision
from model_store.loader import pipeline_spec, select_entry
from model_store.progress import Progress
from model_store.store import ModelEntry, ModelStore
from tests.conftest import Converted
from tests.support.saying import raises_saying

ANSWER_12_TOKENS = GenerationSettings(max_new_tokens=12, ignore_eos=True, system_prompt="")


class TokenCollector(genai.StreamerBase):
    """Receives token ids, so OpenVINO's output can be compared with PyTorch's id for id."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[int] = []

    def write(self, token: int | list[int]) -> genai.StreamingStatus:
        self.tokens.extend(token if isinstance(token, list) else [token])
        return genai.StreamingStatus.RUNNING

    def end(self) -> None:
        pass


def _generate_about_image(entry: ModelEntry, cache_dir: Path | None = None) -> tuple[str, list[str], int]:
    """Twelve tokens about a 640x480 image, through the loader and the engine as the bot runs them."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(sample_image(640, 480)).save(buffer, format="PNG")
    question = Turn("user", "What is in this image?", (prepare_image(buffer.getvalue()),))

    async def ask() -> tuple[str, list[str], int]:
        engine = Engine(
            load_pipeline(pipeline_spec(entry, compile_cache_dir=cache_dir, kv_cache_gb=1)), ANSWER_12_TOKENS
        )
        try:
            events = [event async for event in engine.ask("chat", [], question)]
        finally:
            await engine.aclose()
        done = events[-1]
        assert isinstance(done, Finished) and done.status == "complete", done
        return done.text, [event.text for event in events if isinstance(event, Chunk)], done.report.input_tokens

    return asyncio.run(ask())


def test_int4_conversion_in_its_own_process_runs_in_genai(int4_store: tuple[ModelStore, ModelEntry]) -> None:
    store, entry = int4_store
    assert entry.precision == "int4"
    assert entry.manifest["compression"] == {"mode": "INT4_SYM", "group_size": 64, "ratio": 0.6, "backup": "INT8_ASYM"}
    assert entry.manifest["validation"]["generated_tokens"] >= 1
    assert entry.synthetic
    assert detect_weight_precision(entry.path) == "int4"
    assert store.active() is not None and store.active().slug == entry.slug
    text, chunks, input_tokens = _generate_about_image(entry)
    assert input_tokens > 700, "a 640x480 image with 4 crops is ~760 image positions"
    assert len(chunks) >= 2, "the answer must arrive in several streamed chunks"
    assert "".join(chunks) == text


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_int8_and_fp16_conversions_run_in_genai(request: pytest.FixtureRequest, tmp_path: Path, precision: str) -> None:
    converted: Converted = request.getfixturevalue(f"{precision}_conversion")  # run_conversion, in this process
    entry = converted.entry
    assert entry.precision == precision
    assert detect_weight_precision(entry.path) == precision
    percents = [update.percent for update in converted.progress]
    assert percents == sorted(percents), "progress never goes backwards"
    assert percents[-1] == 100.0
    assert {"check", "export", "compress", "validate", "install"} <= {update.phase for update in converted.progress}
    text, chunks, _ = _generate_about_image(entry, tmp_path / "cache")
    assert "".join(chunks) == text
    assert any((tmp_path / "cache").iterdir()), "OpenVINO's model cache keeps compiled blobs for the next start"


def test_fp32_conversion_reproduces_pytorch_greedy_tokens(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = run_conversion(ConversionRequest(source=str(tiny_checkpoint), store_root=str(tmp_path), precision="fp32"))
    question = "Which colours does the flag of Italy have, and in what order?"
    pipeline = genai.VLMPipeline(str(entry.path), "CPU", INFERENCE_PRECISION_HINT="f32")
    config = genai.GenerationConfig()
    config.max_new_tokens = 16
    config.ignore_eos = True
    collector = TokenCollector()
    result = pipeline.generate(question, generation_config=config, streamer=collector)

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True, torch_dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
    )
    assert int(result.perf_metrics.get_num_input_tokens()) == ids.shape[1]
    with torch.no_grad():
        output = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16, do_sample=False
        )
    assert collector.tokens == output[0, ids.shape[1] :].tolist()


def test_cli_convert_produces_an_entry_genai_runs(int4_conversion: Converted) -> None:
    """The shared INT4 model is the one ``phi3bot convert`` made (tests/conftest.py)."""
    assert "Converted" in int4_conversion.stdout
    assert "100.0%" in int4_conversion.stderr
    store = int4_conversion.store.root
    env = {**os.environ, "MODEL_STORE_DIR": str(store), "DATA_DIR": str(store.parent)}
    phi3bot = Path(sys.executable).with_name("phi3bot")
    listing = subprocess.run(
        [str(phi3bot), "models"], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "* " in listing and "int4" in listing and "(synthetic)" in listing
    entry = select_entry(ModelStore(store), "microsoft/Phi-3.5-vision-instruct", "int4")
    text, chunks, _ = _generate_about_image(entry)
    assert chunks and "".join(chunks) == text


def _copy_store(store: ModelStore, destination: Path) -> ModelStore:
    shutil.copytree(store.root, destination, symlinks=True)
    return ModelStore(destination)


def _snapshot(entry: ModelEntry) -> dict[str, int]:
    return {item.name: item.stat().st_size for item in entry.path.iterdir()}


def test_failed_conversion_keeps_the_old_model_serving(
    int4_store: tuple[ModelStore, ModelEntry], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    source_store, source_entry = int4_store
    store = _copy_store(source_store, tmp_path / "store")
    broken = tmp_path / "broken-checkpoint"
    shutil.copytree(tiny_checkpoint, broken)
    # Same slug as the serving model: a conversion of the same source and precision would replace it.
    link_target = store.entry(source_entry.slug, "int4")
    assert link_target is not None
    before = _snapshot(link_target)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    request = ConversionRequest(source=str(broken), store_root=str(store.root), precision="int4")
    with raises_saying(ConversionFailedError, "previous model keeps serving"):
        convert_in_subprocess(request)
    after = store.entry(source_entry.slug, "int4")
    assert after is not None and after.path == link_target.path and _snapshot(after) == before
    assert not any((store.root / ".staging").iterdir()), "the failed attempt's files are removed"
    text, chunks, _ = _generate_about_image(after)
    assert "".join(chunks) == text


def test_validation_failure_keeps_the_old_model(
    int4_store: tuple[ModelStore, ModelEntry], tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _copy_store(int4_store[0], tmp_path / "store")
    old = store.entry(int4_store[1].slug, "int4")
    assert old is not None

    def refuse(directory: Path, device: str = "CPU") -> dict[str, float]:
        raise ValidationFailedError("the new model produced nothing")

    def export_as_before(checkpoint: Path, output: Path, precision: str, kind: object, report: object) -> None:
        for item in old.path.iterdir():  # the export is tested on its own; here only what follows it counts
            shutil.copyfile(item, output / item.name)

    monkeypatch.setattr("model_store.convert.export.export_checkpoint", export_as_before)
    monkeypatch.setattr("model_store.convert.export.compress", lambda *args, **kwargs: None)
    monkeypatch.setattr("model_store.convert.job.validate_model", refuse)
    with pytest.raises(ValidationFailedError, match="produced nothing"):
        run_conversion(ConversionRequest(source=str(tiny_checkpoint), store_root=str(store.root), precision="int4"))
    current = store.entry(old.slug, "int4")
    assert current is not None and current.path == old.path and current.path.is_dir()


def test_interrupted_conversion_keeps_the_old_model_and_is_cleaned_up(
    int4_store: tuple[ModelStore, ModelEntry], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    store = _copy_store(int4_store[0], tmp_path / "store")
    old = store.entry(int4_store[1].slug, "int4")
    assert old is not None
    cancel = threading.Event()

    def on_progress(update: Progress) -> None:
        if update.phase == "export":
            cancel.set()

    request = ConversionRequest(source=str(tiny_checkpoint), store_root=str(store.root), precision="int4")
    with raises_saying(ConversionInterruptedError, "previous model keeps serving"):
        convert_in_subprocess(request, on_progress, cancel)
    current = store.entry(old.slug, "int4")
    assert current is not None and current.path == old.path and _snapshot(current) == _snapshot(old)
    with store.conversion_lock():  # the next conversion starts by removing what the killed one left
        assert not any((store.root / ".staging").iterdir())


def test_one_conversion_at_a_time(tiny_checkpoint: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with store.conversion_lock(), raises_saying(BusyError, "already running"):
        run_conversion(ConversionRequest(source=str(tiny_checkpoint), store_root=str(tmp_path)))


def test_resources_are_checked_before_starting(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class LowMemory:
        available = 100 * 1024**2

    monkeypatch.setattr("psutil.virtual_memory", lambda: LowMemory())
    request = ConversionRequest(source=str(tiny_checkpoint), store_root=str(tmp_path))
    with raises_saying(InsufficientMemoryError, "Not enough memory"):
        run_conversion(request)
    monkeypatch.undo()

    class Usage:
        free = 1024

    monkeypatch.setattr("shutil.disk_usage", lambda path: Usage())
    with raises_saying(InsufficientDiskError, "Not enough disk space"):
        run_conversion(request)
    assert not any((tmp_path / ".staging").iterdir())
    assert ModelStore(tmp_path).entries() == []


def test_from_ir_takes_a_converted_model_without_torch(
    int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    ir_copy = tmp_path / "phi-3.5-vision-int4-ov"
    shutil.copytree(int4_store[1].path, ir_copy)
    (ir_copy / "manifest.json").unlink()
    script = (
        "import sys\n"
        "from model_store.convert import ConversionRequest, run_conversion\n"
        f"entry = run_conversion(ConversionRequest(source={str(ir_copy)!r}, store_root={str(tmp_path / 'store')!r},"
        " precision=None, from_ir=True))\n"
        "assert 'torch' not in sys.modules, 'taking an IR must not import torch'\n"
        "print(entry.precision)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "int4"


def test_missing_and_corrupt_models_give_clear_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with raises_saying(MissingModelError, "neither an existing directory"):
        run_conversion(ConversionRequest(source=str(missing), store_root=str(tmp_path / "store")))

    corrupt = tmp_path / "corrupt-checkpoint"
    shutil.copytree(tiny_checkpoint, corrupt)
    (corrupt / "config.json").write_text("{ this is not json")
    with raises_saying(CorruptModelError, r"config\.json is not valid JSON"):
        run_conversion(ConversionRequest(source=str(corrupt), store_root=str(tmp_path / "store")))

    (corrupt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with raises_saying(CorruptModelError, "Phi-3-vision"):
        run_conversion(ConversionRequest(source=str(corrupt), store_root=str(tmp_path / "store")))

    empty_store = ModelStore(tmp_path / "empty-store")
    with raises_saying(MissingModelError, "phi3bot convert"):
        select_entry(empty_store, "microsoft/Phi-3.5-vision-instruct", "int4")


def test_damaged_store_entries_are_reported_not_crashed_on(
    int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    store = _copy_store(int4_store[0], tmp_path / "store")
    entry = store.entry(int4_store[1].slug, "int4")
    assert entry is not None
    (entry.path / "openvino_vision_projection_model.bin").unlink()
    with raises_saying(CorruptModelError, r"openvino_vision_projection_model\.bin"):
        pipeline_spec(entry)
    (entry.path / "config.json").write_text("[]")
    with raises_saying(CorruptModelError, "JSON object"):
        pipeline_spec(entry)
    (entry.path / "manifest.json").write_text("{")
    with raises_saying(CorruptModelError, "Convert it again"):
        store.entry(entry.slug, "int4")
    assert store.entries() == [], "listing skips a damaged entry instead of failing"


def test_sample_image_is_deterministic_rgb() -> None:
    image = sample_image(64, 48)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, sample_image(64, 48))
