"""A Phi-3-style tokenizer trained on this machine, so synthetic checkpoints need nothing from the network.

Phi-3's tokenizer is a Llama SentencePiece BPE with byte fallback: ids 0-2 are ``<unk> <s> </s>``, 3-258 the
256 byte tokens, then the learned pieces up to 32000, then the chat tokens from 32000 on.  The trained
tokenizer keeps that layout and the same normalizer/decoder pipeline, so Hugging Face, openvino-tokenizers
and OpenVINO GenAI treat it exactly as they treat Microsoft's.  It is trained on text that ships with Python
(the documentation topics and, for the full-size vocabulary, the standard library's sources).
"""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

BASE_SPECIAL = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{value:02X}>" for value in range(256)]
# Phi-3's added tokens, in id order from the end of the base vocabulary (32000 in the real model).
CHAT_TOKENS = [
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
]
SPIECE_UNDERLINE = "▁"

# Phi-3.5-vision-instruct's chat template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|' + message['role'] + '|>' + '\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{- '<|assistant|>\\n' -}}"
    "{% endif %}"
)


def corpus(max_chars: int) -> Iterator[str]:
    """Lines of English and code that every CPython installation carries, in a stable order."""
    from pydoc_data.topics import topics

    produced = 0
    for key in sorted(topics):
        for line in topics[key].splitlines():
            if line.strip():
                produced += len(line)
                yield line
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        if produced >= max_chars:
            return
        for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
            if line.strip():
                produced += len(line)
                yield line


def train_tokenizer(base_vocab_size: int, max_chars: int) -> Tokenizer:
    """Train the learned pieces, then assemble the Llama/Phi-3 layout around them.

    Training uses a Metaspace pre-tokenizer so that merges stay inside words, as SentencePiece's do; the
    final tokenizer, like Phi-3's ``tokenizer.json``, has no pre-tokenizer and marks spaces in the
    normalizer instead.  Ids missing after training (a small corpus runs out of merges) are filled with
    reserved pieces so the chat tokens land at ``base_vocab_size`` as in the real model.
    """
    learned_target = base_vocab_size - len(BASE_SPECIAL) - len(BYTE_TOKENS)
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=learned_target, show_progress=False, special_tokens=[])
    draft.train_from_iterator(corpus(max_chars), trainer=trainer)
    draft_model = json.loads(draft.to_str())["model"]
    learned = sorted(draft_model["vocab"].items(), key=lambda item: item[1])

    vocab: dict[str, int] = {}
    for token in [*BASE_SPECIAL, *BYTE_TOKENS]:
        vocab[token] = len(vocab)
    for token, _ in learned:
        if len(vocab) >= base_vocab_size:
            break
        vocab.setdefault(token, len(vocab))
    while len(vocab) < base_vocab_size:
        vocab[f"<reserved_{len(vocab)}>"] = len(vocab)
    merges = [tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge) for merge in draft_model["merges"]]
    merges = [merge for merge in merges if merge[0] in vocab and merge[1] in vocab and "".join(merge) in vocab]

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPIECE_UNDERLINE), normalizers.Replace(" ", SPIECE_UNDERLINE)]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(SPIECE_UNDERLINE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tokenizer.add_special_tokens(BASE_SPECIAL)
    tokenizer.add_special_tokens(CHAT_TOKENS)
    return tokenizer


def write_tokenizer(directory: Path, tokenizer: Tokenizer, model_max_length: int) -> dict[str, int]:
    """Write tokenizer.json and the Hugging Face side files; returns the ids of the chat tokens."""
    tokenizer.save(str(directory / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in [*BASE_SPECIAL, *CHAT_TOKENS]}
    added = {
        str(ids[token]): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in [*BASE_SPECIAL, *CHAT_TOKENS]
    }
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "legacy": False,
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "padding_side": "right",
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special_map = {
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return ids
