"""The synthetic checkpoint must look and load exactly like Microsoft's Phi-3-vision checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

from devkit.synthetic import SIZES, build_synthetic_checkpoint
from devkit.synthetic.builder import parameter_shapes, write_configs

PHI3_CHAT_TOKENS = ["<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>", "<|system|>"]


def test_files_and_config_follow_microsofts_layout(tiny_checkpoint: Path) -> None:
    for name in (
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "modeling_phi3_v.py",
        "configuration_phi3_v.py",
        "model.safetensors",
    ):
        assert (tiny_checkpoint / name).is_file(), name
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "phi3_v"
    assert config["architectures"] == ["Phi3VForCausalLM"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_phi3_v.Phi3VConfig",
        "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
    }
    assert config["img_processor"]["image_dim_out"] == 1024
    assert config["img_processor"]["num_img_tokens"] == 144
    assert config["img_processor"]["name"] == "clip_vision_model"
    assert config["embd_layer"]["hd_transform_order"] == "sub_glb"
    assert config["embd_layer"]["use_hd_transform"] is True
    assert config["rope_scaling"]["type"] == "longrope"
    preprocessor = json.loads((tiny_checkpoint / "preprocessor_config.json").read_text())
    assert preprocessor["num_crops"] == 4
    assert preprocessor["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert preprocessor["image_std"] == pytest.approx([0.26862954, 0.26130258, 0.27577711])


def test_tokenizer_has_phi3_tokens_and_chat_template(tiny_checkpoint: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    for token in PHI3_CHAT_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, f"{token} must be one token, got {ids}"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is this?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|user|>\nWhat is this?<|end|>\n<|assistant|>\n"
    text = "A café, naïve résumé — 3 × 4 😀"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_loads_like_the_real_model_and_exposes_what_conversion_touches(tiny_checkpoint: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    assert type(model).__name__ == "Phi3VForCausalLM"
    vision = model.model.vision_embed_tokens
    assert isinstance(vision.img_processor, CLIPVisionModel)
    assert vision.img_processor.config.image_size == 336
    assert vision.img_processor.config.patch_size == 14
    assert vision.img_processor.config.hidden_size == 1024
    first, activation, second = vision.img_projection
    assert (first.in_features, first.out_features) == (4096, model.config.hidden_size)
    assert isinstance(activation, torch.nn.GELU)
    assert (second.in_features, second.out_features) == (model.config.hidden_size, model.config.hidden_size)
    assert tuple(vision.glb_GN.shape) == (1, 1, 4096)
    assert tuple(vision.sub_GN.shape) == (1, 1, 1, 4096)
    with torch.no_grad():
        features = vision.get_img_features(torch.randn(2, 3, 336, 336))
        assert tuple(features.shape) == (2, 576, 1024)
        embeds = model.model.embed_tokens(torch.tensor([[1, 2, 3]]))
        logits = model(inputs_embeds=embeds).logits
    assert tuple(logits.shape) == (1, 3, model.config.vocab_size)


def test_image_prompt_runs_in_pytorch_with_hd_transform_token_count(tiny_checkpoint: Path) -> None:
    """A 2x2-crop image fills (2*12)*(2*12+1) + 1 + 12*13 = 757 positions, as in Phi-3-vision."""
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    image_tokens = (2 * 12) * (2 * 12 + 1) + 1 + 12 * 13
    ids = torch.cat([torch.tensor([[5, 6]]), torch.full((1, image_tokens), -1), torch.tensor([[7, 8]])], dim=1)
    pixel_values = torch.randn(1, 5, 3, 336, 336)
    with torch.no_grad():
        with_image = model(input_ids=ids, pixel_values=pixel_values, image_sizes=torch.tensor([[672, 672]])).logits
        other_image = model(
            input_ids=ids, pixel_values=torch.randn(1, 5, 3, 336, 336), image_sizes=torch.tensor([[672, 672]])
        ).logits
    assert tuple(with_image.shape[:2]) == (1, image_tokens + 4)
    assert not torch.allclose(with_image[0, -1], other_image[0, -1]), "the image must influence the answer"
    wrong_count = torch.cat([torch.tensor([[5]]), torch.full((1, 10), -1)], dim=1)
    with pytest.raises(ValueError, match="image positions"):
        model(input_ids=wrong_count, pixel_values=pixel_values, image_sizes=torch.tensor([[672, 672]]))


def test_full_size_has_phi35_vision_dimensions(tmp_path: Path) -> None:
    """Checked on the meta device: the full builder's shapes, without writing 8 GB."""
    config, token_ids = write_configs(tmp_path, SIZES["full"])
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (3072, 8192, 32)
    assert config.vocab_size == 32064
    assert token_ids["<|endoftext|>"] == 32000
    assert token_ids["<|user|>"] == 32010
    shapes = parameter_shapes(config)
    parameters = sum(shape.numel() for shape in shapes.values())
    assert 4.1e9 < parameters < 4.2e9
    assert tuple(shapes["model.layers.31.self_attn.qkv_proj.weight"]) == (3 * 3072, 3072)
    assert tuple(shapes["model.layers.0.mlp.gate_up_proj.weight"]) == (2 * 8192, 3072)
    assert tuple(shapes["model.vision_embed_tokens.img_processor.vision_model.encoder.layers.23.mlp.fc1.weight"]) == (
        4096,
        1024,
    )


def test_builder_refuses_a_non_empty_directory_and_unknown_sizes(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("important")
    with pytest.raises(FileExistsError, match="not empty"):
        build_synthetic_checkpoint(tmp_path, "tiny")
    assert (tmp_path / "keep.txt").read_text() == "important"
    with pytest.raises(ValueError, match="unknown synthetic size"):
        build_synthetic_checkpoint(tmp_path / "new", "huge")
