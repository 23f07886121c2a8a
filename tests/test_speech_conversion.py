"""The speech model (Whisper) goes through the same conversion as the vision model and is kept beside it: INT8 by
default, validated in GenAI's WhisperPipeline, chosen as the store's speech model without touching the vision
model's choice, and what the export gives transcribes as transformers does."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from devkit.processes import run_phi3bot
from model_store.convert import ConversionRequest, run_conversion
from model_store.errors import CorruptModelError
from model_store.layout import SPEECH, detect_weight_precision
from model_store.loader import pipeline_spec
from model_store.store import ModelStore


def _speech(seconds: float = 3.0) -> np.ndarray:
    """Something like a voice: a tone gliding in pitch, in syllable-long bursts."""
    time_points = np.arange(int(16000 * seconds)) / 16000
    pitch = 180 + 60 * np.sin(2 * np.pi * 0.5 * time_points)
    bursts = np.clip(np.sin(2 * np.pi * 4 * time_points), 0, None)
    return (0.4 * np.sin(2 * np.pi * np.cumsum(pitch) / 16000) * bursts).astype(np.float32)


def test_phi3bot_convert_makes_a_whisper_checkpoint_the_int8_speech_model_beside_the_vision_model(
    tiny_whisper: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "store")
    environment = {**os.environ, "MODEL_STORE_DIR": str(store.root), "DATA_DIR": str(tmp_path)}
    done = run_phi3bot(["convert", "--model", str(tiny_whisper)], environment, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(int8)" in done.stdout and "now the store's speech model" in done.stdout

    [entry] = store.entries()
    assert (entry.kind, entry.precision) == ("speech", "int8")
    assert entry.manifest["compression"] == {"mode": "INT8_ASYM"}
    assert entry.manifest["validation"]["generated_tokens"] >= 1
    assert detect_weight_precision(entry.path, SPEECH) == "int8"
    assert "u8" in (entry.path / "openvino_decoder_model.xml").read_text()
    speech = store.active("speech")
    assert speech is not None and (speech.slug, speech.precision) == (entry.slug, "int8")
    assert store.active() is None  # the vision model's choice is its own

    listed = run_phi3bot(["models"], environment, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("* speech") and str(tiny_whisper) in listed.stdout

    with pytest.raises(CorruptModelError) as refused:  # the vision model's loader takes no speech model
        pipeline_spec(entry)
    assert refused.value.reason == "wrong_kind"


def test_int4_is_refused_for_a_speech_model_with_what_it_can_be(tiny_whisper: Path, tmp_path: Path) -> None:
    environment = {**os.environ, "MODEL_STORE_DIR": str(tmp_path / "store"), "DATA_DIR": str(tmp_path)}
    done = run_phi3bot(["convert", "--model", str(tiny_whisper), "--precision", "int4"], environment, tmp_path)
    assert done.returncode != 0
    assert "a speech model converts to int8 (its default), fp16 or fp32" in done.stderr
    assert "Traceback" not in done.stderr
    assert not ModelStore(tmp_path / "store").entries()


def test_the_exported_model_transcribes_in_genai_as_transformers_does(tiny_whisper: Path, tmp_path: Path) -> None:
    import openvino_genai as genai

    request = ConversionRequest(source=str(tiny_whisper), store_root=str(tmp_path / "store"), precision="fp32")
    entry = run_conversion(request)
    pipeline = genai.WhisperPipeline(str(entry.path), "CPU")
    processor = WhisperProcessor.from_pretrained(tiny_whisper)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper).eval()
    for seconds, language in ((2.0, "en"), (5.0, "fr")):
        sound = _speech(seconds)
        features = processor(sound, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            expected = model.generate(features, language=language, task="transcribe", max_new_tokens=12)
        config = pipeline.get_generation_config()
        config.max_new_tokens = 12
        config.language = f"<|{language}|>"
        config.task = "transcribe"
        heard = pipeline.generate(sound.tolist(), config)
        assert str(heard).strip() == processor.tokenizer.decode(expected[0], skip_special_tokens=True).strip()
        assert heard.perf_metrics.get_num_generated_tokens() == expected.shape[1]
