"""Writes a random-weight Phi-3-vision checkpoint in Hugging Face layout.

The result loads with ``AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)`` and converts
with optimum-intel exactly as ``microsoft/Phi-3.5-vision-instruct`` does: config.json with ``model_type``
``phi3_v`` and ``auto_map``, sharded safetensors, the modeling code, a tokenizer trained here and
``preprocessor_config.json``.  Two sizes: ``tiny`` for tests (seconds) and ``full`` with Phi-3.5-vision's
dimensions for benchmarks (4.15 B parameters, bf16).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from devkit.synthetic.remote_code.configuration_phi3_v import DEFAULT_EMBD_LAYER, Phi3VConfig
from devkit.synthetic.tokenizer import CHAT_TOKENS, train_tokenizer, write_tokenizer
from model_store.progress import PhasePlan, ProgressCallback, ignore_progress

log = logging.getLogger(__name__)

REMOTE_CODE_DIR = Path(__file__).parent / "remote_code"
REMOTE_CODE_FILES = ("configuration_phi3_v.py", "modeling_phi3_v.py")
CLIP_DIR_NAME = "clip-vit-large-patch14-336"
MARKER_FILE = "synthetic.json"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SHARD_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class SyntheticSpec:
    """Dimensions of one synthetic size; the vision width stays 1024 because GenAI asserts 4096-wide separators."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    base_vocab_size: int
    vocab_size: int | None  # None: exactly the tokenizer's size
    tokenizer_corpus_chars: int
    clip_layers: int
    clip_intermediate_size: int
    clip_heads: int
    dtype: str
    init_std: float


SIZES: dict[str, SyntheticSpec] = {
    "tiny": SyntheticSpec(
        name="tiny",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        base_vocab_size=1024,
        vocab_size=None,
        tokenizer_corpus_chars=400_000,
        clip_layers=2,
        clip_intermediate_size=256,
        clip_heads=8,
        dtype="float32",
        init_std=0.1,
    ),
    "full": SyntheticSpec(
        name="full",
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        base_vocab_size=32000,
        vocab_size=32064,
        tokenizer_corpus_chars=30_000_000,
        clip_layers=24,
        clip_intermediate_size=4096,
        clip_heads=16,
        dtype="bfloat16",
        init_std=0.02,
    ),
}


def _clip_config(spec: SyntheticSpec) -> dict:
    """CLIP ViT-L/14-336's configuration (vision depth reduced for tiny), as optimum-intel reads it."""
    from transformers import CLIPConfig

    vision = {
        "hidden_size": 1024,
        "intermediate_size": spec.clip_intermediate_size,
        "num_hidden_layers": spec.clip_layers,
        "num_attention_heads": spec.clip_heads,
        "image_size": 336,
        "patch_size": 14,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    text = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "projection_dim": 768,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=768).to_dict()


def _rope_scaling(head_dim: int) -> dict:
    """LongRoPE factors of the right length: near 1 for short contexts, growing for long ones like Phi-3.5's."""
    half = head_dim // 2
    short = [round(1.0 + 0.05 * i / max(half - 1, 1), 4) for i in range(half)]
    long = [round(1.0 + 31.0 * (i / max(half - 1, 1)) ** 2, 4) for i in range(half)]
    return {"type": "longrope", "short_factor": short, "long_factor": long}


def _language_config(spec: SyntheticSpec, clip_dir: Path, token_ids: dict[str, int], vocab: int) -> Phi3VConfig:
    head_dim = spec.hidden_size // spec.num_attention_heads
    return Phi3VConfig(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        hidden_act="silu",
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling=_rope_scaling(head_dim),
        sliding_window=262144,
        bos_token_id=token_ids["<s>"],
        eos_token_id=token_ids["<|endoftext|>"],
        pad_token_id=token_ids["<|endoftext|>"],
        tie_word_embeddings=False,
        embd_layer=dict(DEFAULT_EMBD_LAYER),
        img_processor={
            "image_dim_out": 1024,
            # optimum-intel reads the CLIP configuration from here; the real model names the hub repository.
            "model_name": str(clip_dir.resolve()),
            "name": "clip_vision_model",
            "num_img_tokens": 144,
        },
        torch_dtype=spec.dtype,
        architectures=["Phi3VForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_phi3_v.Phi3VConfig",
            "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
        },
    )


def _init_tensor(
    name: str, shape: torch.Size, dtype: torch.dtype, std: float, generator: torch.Generator
) -> torch.Tensor:
    """Normalisation weights at one and biases at zero keep activations sane through 32 random layers."""
    leaf = name.rsplit(".", 1)[-1]
    is_norm = any(part in name for part in ("norm", "layrnorm", "layer_norm"))
    if leaf == "bias":
        return torch.zeros(shape, dtype=dtype)
    if is_norm and leaf == "weight":
        return torch.ones(shape, dtype=dtype)
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=generator).to(dtype)


def _write_weights(
    directory: Path, shapes: dict[str, torch.Size], spec: SyntheticSpec, seed: int, plan: PhasePlan
) -> int:
    dtype = getattr(torch, spec.dtype)
    element = torch.empty((), dtype=dtype).element_size()
    total_bytes = sum(shape.numel() for shape in shapes.values()) * element
    generator = torch.Generator().manual_seed(seed)

    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_sizes = [0]
    names = sorted(shapes)
    # Shard boundaries first, so file names can carry the final count as Hugging Face's do.
    for name in names:
        size = shapes[name].numel() * element
        if shard_sizes[-1] and shard_sizes[-1] + size > SHARD_BYTES:
            shards.append({})
            shard_sizes.append(0)
        shards[-1][name] = torch.empty(0)
        shard_sizes[-1] += size
    count = len(shards)
    weight_map: dict[str, str] = {}
    written = 0
    for index, shard in enumerate(shards, start=1):
        file_name = "model.safetensors" if count == 1 else f"model-{index:05d}-of-{count:05d}.safetensors"
        for name in shard:
            shard[name] = _init_tensor(name, shapes[name], dtype, spec.init_std, generator)
            written += shard[name].numel() * element
            weight_map[name] = file_name
            plan.report("weights", written / total_bytes, f"{written / 1e6:,.0f} of {total_bytes / 1e6:,.0f} MB")
        save_file(shard, str(directory / file_name), metadata={"format": "pt"})
        shard.clear()
    if count > 1:
        index_json = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")
    return sum(shape.numel() for shape in shapes.values())


def write_configs(directory: Path, spec: SyntheticSpec) -> tuple[Phi3VConfig, dict[str, int]]:
    """Everything but the weights: tokenizer, configs, modeling code, generation and preprocessor settings."""
    tokenizer = train_tokenizer(spec.base_vocab_size, spec.tokenizer_corpus_chars)
    token_ids = write_tokenizer(directory, tokenizer, model_max_length=131072)
    vocab = spec.vocab_size or tokenizer.get_vocab_size()
    clip_dir = directory / CLIP_DIR_NAME
    clip_dir.mkdir()
    (clip_dir / "config.json").write_text(json.dumps(_clip_config(spec), indent=2) + "\n")
    config = _language_config(spec, clip_dir, token_ids, vocab)
    config.save_pretrained(directory)
    for file_name in REMOTE_CODE_FILES:
        shutil.copyfile(REMOTE_CODE_DIR / file_name, directory / file_name)
    stop_ids = [token_ids["<|end|>"], token_ids["<|assistant|>"], token_ids["<|endoftext|>"]]
    generation = {
        "bos_token_id": token_ids["<s>"],
        "eos_token_id": stop_ids,
        "pad_token_id": token_ids["<|endoftext|>"],
    }
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    preprocessor = {
        "do_convert_rgb": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "num_crops": 4,
        "num_img_tokens": 144,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return config, token_ids


def parameter_shapes(config: Phi3VConfig) -> dict[str, torch.Size]:
    """Names and shapes of every floating-point tensor, from a model built on the meta device (no memory)."""
    from devkit.synthetic.remote_code.modeling_phi3_v import Phi3VForCausalLM

    with torch.device("meta"):
        skeleton = Phi3VForCausalLM(config)
    return {name: tensor.shape for name, tensor in skeleton.state_dict().items() if tensor.is_floating_point()}


def known_size(size: str, sizes: Mapping[str, object]) -> str:
    if size not in sizes:
        raise ValueError(f"unknown synthetic size {size!r}; choose one of {', '.join(sizes)}")
    return size


def new_checkpoint_directory(directory: Path) -> Path:
    """``directory``, made; refused unless it is empty or absent, so no checkpoint is built over another."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty; choose a new directory for the synthetic checkpoint")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def build_synthetic_checkpoint(
    directory: Path,
    size: str = "tiny",
    *,
    seed: int = 0,
    progress: ProgressCallback = ignore_progress,
) -> Path:
    """Build into ``directory`` (created; must be empty or absent) and return it."""
    spec = SIZES[known_size(size, SIZES)]
    directory = new_checkpoint_directory(directory)
    plan = PhasePlan([("configure", 1), ("weights", 20 if size == "full" else 2)], progress)
    plan.report("configure", 0.0, "training the tokenizer and writing configuration")
    config, token_ids = write_configs(directory, spec)
    parameters = _write_weights(directory, parameter_shapes(config), spec, seed, plan)
    marker = {"synthetic": True, "size": size, "seed": seed, "parameters": parameters, "spec": asdict(spec)}
    marker["chat_tokens"] = {token: token_ids[token] for token in CHAT_TOKENS}
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    log.info("built synthetic %s checkpoint with %.2f M parameters in %s", size, parameters / 1e6, directory)
    return directory
