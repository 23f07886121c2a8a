"""Configuration of the synthetic Phi-3-vision checkpoints that phi3bot builds for tests and benchmarks.

It extends transformers' Phi-3 configuration the way Microsoft's ``configuration_phi3_v.py`` does, with the
``embd_layer`` and ``img_processor`` fields that optimum-intel and OpenVINO GenAI read.  The file is copied
into every synthetic checkpoint and registered through ``auto_map``, so the checkpoint loads with
``trust_remote_code=True`` exactly like Microsoft's.
"""

from __future__ import annotations

from typing import Any

from transformers.models.phi3.configuration_phi3 import Phi3Config

DEFAULT_EMBD_LAYER: dict[str, Any] = {
    "embedding_cls": "image",
    "hd_transform_order": "sub_glb",
    "projection_cls": "mlp",
    "use_hd_transform": True,
    "with_learnable_separator": True,
}

DEFAULT_IMG_PROCESSOR: dict[str, Any] = {
    "image_dim_out": 1024,
    "model_name": "openai/clip-vit-large-patch14-336",
    "name": "clip_vision_model",
    "num_img_tokens": 144,
}


class Phi3VConfig(Phi3Config):
    model_type = "phi3_v"

    def __init__(
        self,
        embd_layer: dict[str, Any] | None = None,
        img_processor: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.embd_layer = dict(DEFAULT_EMBD_LAYER if embd_layer is None else embd_layer)
        self.img_processor = dict(DEFAULT_IMG_PROCESSOR if img_processor is None else img_processor)
        super().__init__(**kwargs)
