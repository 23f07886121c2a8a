"""The synthetic Whisper checkpoints (devkit/synthetic/whisper.py) are Whisper as transformers and OpenVINO GenAI read
it: Whisper's token layout and generation settings, the real sizes for base and small, and a model that transcribes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from devkit.synthetic.whisper import SIZES, TASK_TOKENS, model_config, vocabulary_size


def test_the_tokenizer_has_whispers_layout_and_the_generation_settings_name_its_ids(tiny_whisper: Path) -> None:
    tokenizer = WhisperTokenizer.from_pretrained(tiny_whisper)
    base = SIZES["tiny"].base_vocab_size
    ids = tokenizer.convert_tokens_to_ids
    languages = [f"<|{code}|>" for code in LANGUAGES if code != "yue"]  # large-v3 added Cantonese
    assert ids("<|endoftext|>") == base
    assert ids("<|startoftranscript|>") == base + 1
    assert [ids(token) for token in languages] == list(range(base + 2, base + 2 + len(languages)))
    first_task = base + 2 + len(languages)
    assert [ids(token) for token in TASK_TOKENS] == list(range(first_task, first_task + len(TASK_TOKENS)))
    assert ids("<|0.00|>") == ids("<|notimestamps|>") + 1 and ids("<|30.00|>") == ids("<|0.00|>") + 1500
    assert len(tokenizer) == WhisperConfig.from_pretrained(tiny_whisper).vocab_size == ids("<|30.00|>") + 1

    generation = json.loads((tiny_whisper / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == ids("<|startoftranscript|>")
    assert generation["lang_to_id"] == {token: ids(token) for token in languages}
    assert generation["task_to_id"] == {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    assert generation["no_timestamps_token_id"] == ids("<|notimestamps|>")
    assert generation["begin_suppress_tokens"] == [ids("Ġ"), ids("<|endoftext|>")]

    sentence = "Is this plant safe for cats? Ça dépend."
    encoded = tokenizer(sentence, add_special_tokens=False).input_ids
    assert (
        encoded
        == WhisperProcessor.from_pretrained(tiny_whisper).tokenizer(sentence, add_special_tokens=False).input_ids
    )
    assert tokenizer.decode(encoded) == sentence


def test_the_tiny_model_transcribes_in_french_the_same_way_twice(tiny_whisper: Path) -> None:
    processor = WhisperProcessor.from_pretrained(tiny_whisper)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper).eval()
    seconds = np.arange(16000 * 2) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 220 * seconds) * np.sin(2 * np.pi * 3 * seconds)).astype(np.float32)
    features = processor(speech, sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape == (1, 80, 3000)  # 30 s of 10 ms frames, as Whisper's encoder takes them
    with torch.no_grad():
        first = model.generate(features, language="fr", task="transcribe", max_new_tokens=8)
        again = model.generate(features, language="fr", task="transcribe", max_new_tokens=8)
    # transformers returns what follows the prompt it built from generation_config.json (an unknown language or
    # task would have raised): the words, without special tokens.
    assert 0 < first.shape[1] <= 8
    assert not set(first[0].tolist()) & set(processor.tokenizer.all_special_ids)
    assert torch.equal(first, again)


@pytest.mark.parametrize(("size", "published_millions"), [("base", 74), ("small", 244)])
def test_base_and_small_have_openais_dimensions_and_vocabulary(size: str, published_millions: int) -> None:
    spec = SIZES[size]
    assert vocabulary_size(spec) == 51865  # openai/whisper-base's and -small's vocab_size
    config = model_config(spec, start=50258, end=50257)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    parameters = sum(tensor.numel() for tensor in model.parameters())
    assert abs(parameters / 1e6 - published_millions) / published_millions < 0.03
