"""Synthetic Whisper checkpoints: the real architecture and file layout with random weights and a tokenizer trained
on this machine, for the speech model's tests (tiny) and benchmarks (base and small at their real sizes).

The tokenizer keeps Whisper's layout: a byte-level BPE, then ``<|endoftext|>``,
``<|startoftranscript|>``, one token per language in Whisper's order, the task tokens, ``<|notimestamps|>`` and the
1501 timestamps.  generation_config.json carries what transformers and OpenVINO GenAI read from the real one
(language and task ids, the tokens suppressed), so both treat it as they treat OpenAI's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from devkit.synthetic.builder import known_size, new_checkpoint_directory
from devkit.synthetic.tokenizer import corpus

log = logging.getLogger(__name__)

MARKER_FILE = "synthetic.json"
ENDOFTEXT = "<|endoftext|>"
SPACE = "Ġ"  # a space, in the byte-level alphabet
TASK_TOKENS = (
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)
TIMESTAMPS = [f"<|{index * 0.02:.2f}|>" for index in range(1501)]
SAMPLING_RATE = 16000
MEL_BINS = 80


@dataclass(frozen=True)
class WhisperSpec:
    name: str
    d_model: int
    layers: int  # encoder and decoder each
    heads: int
    ffn: int
    base_vocab_size: int  # byte-level BPE pieces; <|endoftext|> comes right after them
    tokenizer_corpus_chars: int
    init_std: float


# base and small: openai/whisper-base and openai/whisper-small's dimensions and vocabulary (51865 tokens).
SIZES: dict[str, WhisperSpec] = {
    "tiny": WhisperSpec("tiny", 64, 2, 4, 128, 4096, 400_000, 0.1),
    "base": WhisperSpec("base", 512, 6, 8, 2048, 50257, 30_000_000, 0.02),
    "small": WhisperSpec("small", 768, 12, 12, 3072, 50257, 30_000_000, 0.02),
}


def _languages() -> list[str]:
    """The language codes of Whisper's base and small models in their token order: transformers' list without the
    one large-v3 added (Cantonese)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return [code for code in LANGUAGES if code != "yue"]


def train_whisper_tokenizer(spec: WhisperSpec) -> Tokenizer:
    """GPT-2's byte-level BPE trained here, with Whisper's special tokens after it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.base_vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(corpus(spec.tokenizer_corpus_chars), trainer=trainer)
    learned = tokenizer.get_vocab_size()  # a small corpus runs out of merges: the rest is reserved
    tokenizer.add_tokens([f"<|reserved_{index}|>" for index in range(learned, spec.base_vocab_size)])
    specials = [ENDOFTEXT, "<|startoftranscript|>", *(f"<|{code}|>" for code in _languages()), *TASK_TOKENS]
    tokenizer.add_special_tokens(specials)
    tokenizer.add_tokens(TIMESTAMPS)
    start = tokenizer.token_to_id("<|startoftranscript|>")
    notimestamps = tokenizer.token_to_id("<|notimestamps|>")
    end = tokenizer.token_to_id(ENDOFTEXT)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"<|startoftranscript|>:0 <|notimestamps|>:0 $A:0 {ENDOFTEXT}:0",
        pair=f"<|startoftranscript|>:0 <|notimestamps|>:0 $A:0 $B:1 {ENDOFTEXT}:1",
        special_tokens=[("<|startoftranscript|>", start), ("<|notimestamps|>", notimestamps), (ENDOFTEXT, end)],
    )
    return tokenizer


def _write_tokenizer(directory: Path, tokenizer: Tokenizer) -> dict[str, int]:
    """tokenizer.json, and vocab.json and merges.txt for transformers' slow tokenizer; returns the special ids."""
    tokenizer.save(str(directory / "tokenizer.json"))
    model = json.loads(tokenizer.to_str())["model"]
    (directory / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = [ENDOFTEXT, "<|startoftranscript|>", *(f"<|{code}|>" for code in _languages()), *TASK_TOKENS]
    ids = {token: tokenizer.token_to_id(token) for token in [SPACE, *specials]}
    config = {
        "tokenizer_class": "WhisperTokenizer",
        "bos_token": ENDOFTEXT,
        "eos_token": ENDOFTEXT,
        "unk_token": ENDOFTEXT,
        "pad_token": ENDOFTEXT,
        "add_prefix_space": False,
        "errors": "replace",
        "model_max_length": 1024,
        "additional_special_tokens": specials[1:],
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special_map = {name: ENDOFTEXT for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (directory / "special_tokens_map.json").write_text(
        json.dumps({**special_map, "additional_special_tokens": specials[1:]}, indent=2) + "\n"
    )
    return ids


def _generation_config(ids: dict[str, int], vocab: int) -> dict[str, object]:
    """What openai/whisper-*'s generation_config.json says, with this tokenizer's ids."""
    end = ids[ENDOFTEXT]
    return {
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "bos_token_id": end,
        "eos_token_id": end,
        "pad_token_id": end,
        "begin_suppress_tokens": [ids[SPACE], end],
        "suppress_tokens": [],
        "is_multilingual": True,
        "lang_to_id": {f"<|{code}|>": ids[f"<|{code}|>"] for code in _languages()},
        "task_to_id": {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        "no_timestamps_token_id": ids["<|notimestamps|>"],
        "prev_sot_token_id": ids["<|startofprev|>"],
        "max_initial_timestamp_index": 50,
        "max_length": 448,
        "return_timestamps": False,
        "vocab_size": vocab,
    }


def vocabulary_size(spec: WhisperSpec) -> int:
    """The byte-level pieces, <|endoftext|>, <|startoftranscript|>, the languages, the task tokens, the timestamps."""
    return spec.base_vocab_size + 2 + len(_languages()) + len(TASK_TOKENS) + len(TIMESTAMPS)


def model_config(spec: WhisperSpec, start: int, end: int) -> WhisperConfig:
    """``start``: <|startoftranscript|>'s id; ``end``: <|endoftext|>'s."""
    return WhisperConfig(
        vocab_size=vocabulary_size(spec),
        num_mel_bins=MEL_BINS,
        d_model=spec.d_model,
        encoder_layers=spec.layers,
        decoder_layers=spec.layers,
        encoder_attention_heads=spec.heads,
        decoder_attention_heads=spec.heads,
        encoder_ffn_dim=spec.ffn,
        decoder_ffn_dim=spec.ffn,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=start,
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=end,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        torch_dtype="float32",
        architectures=["WhisperForConditionalGeneration"],
    )


def build_synthetic_whisper(directory: Path, size: str = "tiny", *, seed: int = 0) -> Path:
    """Build into ``directory`` (created; must be empty or absent) and return it."""
    spec = SIZES[known_size(size, SIZES)]
    directory = new_checkpoint_directory(directory)
    tokenizer = train_whisper_tokenizer(spec)
    ids = _write_tokenizer(directory, tokenizer)
    vocab = tokenizer.get_vocab_size()
    if vocab != vocabulary_size(spec):
        raise RuntimeError(f"the trained tokenizer has {vocab} tokens, not Whisper's layout's {vocabulary_size(spec)}")
    config = model_config(spec, ids["<|startoftranscript|>"], ids[ENDOFTEXT])
    config.save_pretrained(directory)
    generation = _generation_config(ids, vocab)
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=SAMPLING_RATE).save_pretrained(directory)
    torch.manual_seed(seed)
    with torch.no_grad():
        model = WhisperForConditionalGeneration(config)
        for name, tensor in model.state_dict().items():
            if name.endswith("bias"):
                tensor.zero_()
            elif "layer_norm" in name:
                tensor.fill_(1.0)
            elif tensor.is_floating_point() and "encoder.embed_positions" not in name:  # those are sinusoids
                tensor.normal_(0.0, spec.init_std)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items() if name != "proj_out.weight"}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    parameters = sum(tensor.numel() for tensor in state.values())
    marker = {"synthetic": True, "kind": "whisper", "size": size, "seed": seed, "parameters": parameters}
    (directory / MARKER_FILE).write_text(json.dumps({**marker, "spec": asdict(spec)}, indent=2) + "\n")
    log.info("built synthetic Whisper %s with %.2f M parameters in %s", size, parameters / 1e6, directory)
    return directory
