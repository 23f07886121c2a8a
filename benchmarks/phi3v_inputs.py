"""Phi-3-vision's image processor, written here from its published algorithm, and the model inputs it makes.

OpenVINO GenAI preprocesses images itself; optimum-intel's ``OVModelForVisualCausalLM`` and the PyTorch model
take ``input_ids`` with negative ids where image features go, ``pixel_values`` [images, num_crops + 1, 3, 336,
336] (the global view first, zero crops as padding) and ``image_sizes`` [[height, width]] of the padded HD image.
The synthetic checkpoints ship no processor, so this is Microsoft's, step by step:

1. the HD transform: the image is scaled, aspect ratio kept (bilinear, as torchvision resizes a PIL image), so
   that at most ``num_crops`` 336-pixel crops cover it (engine.images.crop_grid), and its short side is
   padded with white, centred, to whole crops (a portrait image is worked as its transpose);
2. CLIP normalisation of the HD image, ``(x / 255 - mean) / std`` per channel;
3. the global view: the whole normalised HD image resized to 336 x 336 by torch's bicubic interpolation
   (coefficient -0.75, half-pixel centres, no antialiasing);
4. the crops, row by row, after the global view;
5. (rows x columns + 1) x 144 + 1 + (rows + 1) x 12 prompt positions (engine.images.grid_tokens).

tests/test_preprocessing_fidelity.py holds OpenVINO GenAI's preprocessing against this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.images import CROP, crop_grid, grid_tokens

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
    """Step 1: scaled to the widest grid of 336-pixel crops that fits ``num_crops``, short side padded white."""
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


def normalised(image: Image.Image, mean: list[float], std: list[float]) -> np.ndarray:
    """Step 2: 3 x H x W float32, CLIP-normalised."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255)
    array = (array - np.array(mean, np.float32)) / np.array(std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def global_view(hd: np.ndarray) -> np.ndarray:
    """Step 3: the normalised HD image (3 x H x W) as one 336 x 336 view, by torch's bicubic resize."""
    tensor = torch.from_numpy(hd)[None]
    return torch.nn.functional.interpolate(tensor, size=(CROP, CROP), mode="bicubic", align_corners=False)[0].numpy()


def crops(hd: np.ndarray) -> np.ndarray:
    """Step 4: the normalised HD image cut into [rows x columns, 3, 336, 336], row by row."""
    rows, columns = hd.shape[1] // CROP, hd.shape[2] // CROP
    return hd.reshape(3, rows, CROP, columns, CROP).transpose(1, 3, 0, 2, 4).reshape(-1, 3, CROP, CROP)


def pixel_inputs(image: Image.Image, num_crops: int, mean: list[float], std: list[float]) -> tuple[Any, Any, int]:
    """``pixel_values`` [1, num_crops + 1, 3, 336, 336], ``image_sizes`` [1, 2] and the image's token count."""
    hd = normalised(hd_image(image.convert("RGB"), num_crops), mean, std)
    height, width = hd.shape[1:]
    views = np.zeros((num_crops + 1, 3, CROP, CROP), np.float32)
    cut = crops(hd)
    views[0] = global_view(hd)
    views[1 : 1 + len(cut)] = cut
    tokens = grid_tokens(height // CROP, width // CROP)
    return torch.from_numpy(views)[None], torch.tensor([[height, width]]), tokens


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
