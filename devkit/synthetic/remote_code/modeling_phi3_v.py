"""Phi-3-vision model for the synthetic checkpoints that phi3bot builds.

This is the architecture of Microsoft's Phi-3-vision / Phi-3.5-vision, written for this project on top of
transformers' Phi-3 decoder (same fused ``qkv_proj`` / ``gate_up_proj`` weights).  It keeps the module paths
and behaviour that optimum-intel's ``phi3_v`` exporter and OpenVINO GenAI rely on:

* ``model.model.vision_embed_tokens.img_processor``: a CLIP vision tower (336 px, patch 14, width 1024);
* ``get_img_features(pixel_values)`` returning ``hidden_states[-2][:, 1:]`` (CLS token dropped);
* ``img_projection``: ``Linear(4096, hidden) -> GELU -> Linear(hidden, hidden)`` applied to 2x2-merged patches;
* learnable separators ``glb_GN`` [1, 1, 4096] and ``sub_GN`` [1, 1, 1, 4096];
* the "HD transform" layout: sub-image features, then ``glb_GN``, then the global image features, each row of
  12 merged patches followed by ``sub_GN``;
* image positions in ``input_ids`` marked by negative ids, replaced by the projected image features;
* ``model.model.embed_tokens`` and a language model that accepts ``inputs_embeds``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import CLIPConfig, CLIPVisionModel
from transformers.models.phi3.modeling_phi3 import Phi3ForCausalLM, Phi3Model, Phi3PreTrainedModel

from .configuration_phi3_v import Phi3VConfig

CROP_SIZE = 336
MERGED_GRID = 12  # 24x24 patches per crop, merged 2x2
MERGED_DIM = 4096  # 4 x 1024


class Phi3ImageEmbedding(nn.Module):
    """CLIP features of every crop, merged 2x2 and projected into the language model's embedding space."""

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__()
        vision_config = CLIPConfig.from_pretrained(config.img_processor["model_name"]).vision_config
        self.img_processor = CLIPVisionModel(vision_config)
        self.image_dim_out = config.img_processor["image_dim_out"]
        self.num_img_tokens = config.img_processor["num_img_tokens"]
        self.layer_idx = config.img_processor.get("layer_idx", -2)
        self.hd_transform_order = config.embd_layer.get("hd_transform_order", "sub_glb")
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, self.image_dim_out * 4))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, self.image_dim_out * 4))
        self.img_projection = nn.Sequential(
            nn.Linear(self.image_dim_out * 4, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )

    def get_img_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outputs = self.img_processor(pixel_values, output_hidden_states=True)
        return outputs.hidden_states[self.layer_idx][:, 1:]

    def _merge_2x2(self, features: torch.Tensor) -> torch.Tensor:
        """[N, 576, 1024] -> [N, 12, 12, 4096]: neighbouring patches side by side, as the projection expects."""
        n, length, channels = features.shape
        side = int(length**0.5)
        return (
            features.reshape(n, side, side, channels)
            .reshape(n, side // 2, 2, side // 2, 2, channels)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(n, side // 2, side // 2, 4 * channels)
        )

    def _with_row_separators(self, grid: torch.Tensor) -> torch.Tensor:
        """[1, H, W, 4096] -> [1, H*(W+1), 4096]: a ``sub_GN`` after every row tells the model where rows end."""
        rows = grid.shape[1]
        separator = self.sub_GN.repeat(1, rows, 1, 1)
        return torch.cat([grid, separator], dim=2).reshape(1, -1, grid.shape[-1])

    def hd_features(self, crops_features: torch.Tensor, h_crops: int, w_crops: int) -> torch.Tensor:
        """Features of one image: its crops (global first) laid out as Phi-3-vision's HD transform does."""
        merged = self._merge_2x2(crops_features)
        global_features = self._with_row_separators(merged[:1])
        sub = merged[1 : 1 + h_crops * w_crops]
        sub = (
            sub.reshape(1, h_crops, w_crops, MERGED_GRID, MERGED_GRID, -1)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(1, h_crops * MERGED_GRID, w_crops * MERGED_GRID, -1)
        )
        sub_features = self._with_row_separators(sub)
        if self.hd_transform_order == "glb_sub":
            return torch.cat([global_features, self.glb_GN, sub_features], dim=1)
        return torch.cat([sub_features, self.glb_GN, global_features], dim=1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        wte: nn.Embedding,
    ) -> torch.Tensor:
        """Text embeddings with the image features written over the negative-id positions."""
        positions = torch.nonzero(input_ids < 0, as_tuple=False)
        hidden_states = wte(input_ids.clamp_min(0))
        if positions.numel() == 0:
            return hidden_states
        num_images, num_crops = pixel_values.shape[:2]
        features = self.get_img_features(pixel_values.flatten(0, 1).to(self.img_processor.dtype))
        features = features.reshape(num_images, num_crops, -1, self.image_dim_out)
        projected = []
        for index in range(num_images):
            height, width = (int(v) for v in image_sizes[index])
            image_features = self.hd_features(features[index], height // CROP_SIZE, width // CROP_SIZE)
            projected.append(self.img_projection(image_features.to(self.img_projection[0].weight.dtype)))
        image_embeds = torch.cat(projected, dim=1).squeeze(0).to(hidden_states.dtype)
        if image_embeds.shape[0] != positions.shape[0]:
            raise ValueError(
                f"the prompt has {positions.shape[0]} image positions but the images give {image_embeds.shape[0]}"
            )
        hidden_states = hidden_states.clone()
        hidden_states[positions[:, 0], positions[:, 1]] = image_embeds
        return hidden_states


class Phi3VModel(Phi3Model):
    config_class = Phi3VConfig

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__(config)
        self.vision_embed_tokens = Phi3ImageEmbedding(config)
        self.post_init()

    def embed(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None,
        image_sizes: torch.Tensor | None,
    ) -> torch.Tensor:
        if pixel_values is not None and image_sizes is not None and bool((input_ids < 0).any()):
            return self.vision_embed_tokens(input_ids, pixel_values, image_sizes, self.embed_tokens)
        return self.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed(input_ids, pixel_values, image_sizes)
        return super().forward(input_ids=None, inputs_embeds=inputs_embeds, **kwargs)


class Phi3VForCausalLM(Phi3ForCausalLM):
    config_class = Phi3VConfig

    def __init__(self, config: Phi3VConfig) -> None:
        Phi3PreTrainedModel.__init__(self, config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The Phi-3 forward pass, with image features merged into the embeddings first when pixels are given."""
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.model.embed(input_ids, pixel_values, image_sizes)
        return super().forward(
            input_ids=None,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            cache_position=cache_position,
            logits_to_keep=0 if logits_to_keep is None else logits_to_keep,
            **kwargs,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: Any = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Images are embedded once, in the prefill step; later steps only see the newest token."""
        inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values, **kwargs)
        cache_position = kwargs.get("cache_position")
        if cache_position is None or int(cache_position[0]) == 0:
            inputs["pixel_values"] = pixel_values
            inputs["image_sizes"] = image_sizes
        return inputs
