"""Model inputs for the transformers-driven variants (optimum-intel, PyTorch), as Phi-3-vision's processor makes them.

OpenVINO GenAI preprocesses images itself; optimum-intel's ``OVModelForVisualCausalLM`` and the PyTorch model
take ``input_ids`` with negative ids where image features go, ``pixel_values`` [images, num_crops + 1, 3, 336,
336] (the global view first, zero crops as padding) and ``image_sizes`` [[height, width]] of the padded HD image.
The synthetic checkpoints ship no processor, so this is Phi-3-vision's published HD transform, written here: the
image is scaled so that at most ``num_crops`` 336-pixel crops cover it (aspect ratio kept, height padded with
white to a multiple of 336); each image takes (crops + 1) x 144 + 1 + (rows + 1) x 12 positions.  The token
counts agree with what GenAI reports for the same image (the benchmark prints both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.images import CROP, crop_grid

TOKENS_PER_CROP = 144
ROW_TOKENS = 12
IMAGE_TAG = "<|image_1|>"


@dataclass(frozen=True)
class ModelInputs:
    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    image_sizes: torch.Tensor | None

    def as_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "input_ids": self.input_ids,
            "attention_mask": torch.ones_like(self.input_ids),
        }
        if self.pixel_values is not None:
            kwargs["pixel_values"] = self.pixel_values
            kwargs["image_sizes"] = self.image_sizes
        return kwargs


def hd_image(image: Image.Image, num_crops: int) -> Image.Image:
    """Scale to the widest grid of 336-pixel crops that fits ``num_crops``, then pad the short side with white."""
    rows, columns = crop_grid(image.width, image.height, num_crops)
    transposed = image.width < image.height  # worked landscape, as the reference processor does
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
        rows, columns = columns, rows
    width = columns * CROP
    height = int(width / (image.width / image.height))
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (width, rows * CROP), (255, 255, 255))
    canvas.paste(resized, (0, (canvas.height - height) // 2))
    return canvas.transpose(Image.Transpose.TRANSPOSE) if transposed else canvas


def pixel_inputs(image: Image.Image, num_crops: int, mean: list[float], std: list[float]) -> tuple[Any, Any, int]:
    """``pixel_values`` [1, num_crops + 1, 3, 336, 336], ``image_sizes`` [1, 2] and the image's token count."""
    hd = hd_image(image.convert("RGB"), num_crops)
    array = (np.asarray(hd, dtype=np.float32) / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
    tensor = torch.from_numpy(array).permute(2, 0, 1)  # 3, H, W
    rows, columns = hd.height // CROP, hd.width // CROP
    global_view = torch.nn.functional.interpolate(tensor[None], size=(CROP, CROP), mode="bicubic", align_corners=False)
    crops = tensor.reshape(3, rows, CROP, columns, CROP).permute(1, 3, 0, 2, 4).reshape(-1, 3, CROP, CROP)
    views = torch.zeros(num_crops + 1, 3, CROP, CROP)
    views[0] = global_view[0]
    views[1 : 1 + crops.shape[0]] = crops
    tokens = (rows * columns + 1) * TOKENS_PER_CROP + 1 + (rows + 1) * ROW_TOKENS
    return views[None], torch.tensor([[hd.height, hd.width]]), tokens


def build_inputs(
    tokenizer: Any,
    conversation: list[dict[str, str]],
    image: Image.Image | None,
    *,
    num_crops: int,
    mean: list[float],
    std: list[float],
) -> ModelInputs:
    """The chat-templated conversation; the first user turn carries the image tag when there is an image."""
    if image is not None:
        first = conversation[0]
        conversation = [{**first, "content": f"{IMAGE_TAG}\n{first['content']}"}, *conversation[1:]]
    prompt = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    if image is None:
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        return ModelInputs(torch.tensor([ids]), None, None)
    before, after = prompt.split(IMAGE_TAG, 1)
    pixel_values, image_sizes, tokens = pixel_inputs(image, num_crops, mean, std)
    ids = [
        *tokenizer(before, add_special_tokens=False).input_ids,
        *([-1] * tokens),
        *tokenizer(after, add_special_tokens=False).input_ids,
    ]
    return ModelInputs(torch.tensor([ids]), pixel_values, image_sizes)
