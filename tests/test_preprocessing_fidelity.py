"""OpenVINO GenAI's Phi-3-vision image preprocessing held against Phi-3-vision's own (benchmarks/phi3v_inputs.py).

GenAI's prompt length and the views it hands the vision encoder are read through stand-in vision models
(benchmarks/genai_probe.py) on the tiny synthetic model, for photos, screenshots, a panorama and a tiny image at
1, 4 and 16 crops.  The images are random noise, the hardest case for resizing.  Two differences are known and
asserted as they are, so that a test fails when GenAI changes; the README's "Fidelity" section says what to
change then:

1. GenAI counts a non-square crop grid transposed: 12 x (columns - rows) positions more than Phi-3-vision's
   formula (and lays the crops out wrongly, which is why engine.images.for_genai pads to a square grid);
2. GenAI's global view is the HD image decimated (benchmarks.genai_probe.genai_global_view), not resized by
   Phi-3-vision's bicubic interpolation.

A third, rare one is followed rather than asserted: GenAI works out the HD transform in float32, so for one
image size in 1,000 to 2,500 its HD image is a pixel taller or shorter, and very rarely its grid differs
(engine.images.crop_grid(single_precision=True)).  Everything else, the HD transform's resize and padding, the
normalisation and the crops, is Phi-3-vision's to within one 8-bit level.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.genai_probe import GenaiProbe, genai_global_view
from benchmarks.phi3v_inputs import crops, global_view, hd_image, normalised
from benchmarks.preprocessing_fidelity import ROUNDED_SIZES, SIZES, random_noise
from engine.images import ROW_TOKENS, crop_grid, for_genai, grid_tokens, image_tokens
from model_store.store import ModelEntry, ModelStore

CROPS = (1, 4, 16)


@pytest.fixture(scope="module")
def model(int4_store: tuple[ModelStore, ModelEntry]) -> ModelEntry:
    return int4_store[1]


@pytest.fixture(scope="module")
def probes(model: ModelEntry, tmp_path_factory: pytest.TempPathFactory) -> dict[int, GenaiProbe]:
    work = tmp_path_factory.mktemp("probes")
    return {num_crops: GenaiProbe(model, work, num_crops) for num_crops in CROPS}


@pytest.fixture(scope="module")
def normalisation(model: ModelEntry) -> tuple[list[float], list[float]]:
    config = json.loads((model.path / "preprocessor_config.json").read_text())
    return config["image_mean"], config["image_std"]


@pytest.mark.parametrize("num_crops", CROPS)
def test_genai_counts_phi3_visions_image_tokens_but_transposes_a_non_square_grid(
    probes: dict[int, GenaiProbe], num_crops: int
) -> None:
    """Known difference 1.  Once GenAI counts ``grid_tokens(rows, columns)``, the square padding can go."""
    for name, (width, height) in {**SIZES, **ROUNDED_SIZES}.items():
        rows, columns = crop_grid(width, height, num_crops, single_precision=True)
        counted = probes[num_crops].image_tokens(random_noise(width, height))
        assert counted == grid_tokens(columns, rows), name
        assert counted - grid_tokens(rows, columns) == ROW_TOKENS * (columns - rows), name
        if name in SIZES:
            assert crop_grid(width, height, num_crops) == (rows, columns), name


@pytest.mark.parametrize("num_crops", CROPS)
def test_image_tokens_is_what_genai_counts_for_the_image_the_engine_hands_it(
    probes: dict[int, GenaiProbe], num_crops: int
) -> None:
    for name, (width, height) in {**SIZES, **ROUNDED_SIZES}.items():
        handed = for_genai(random_noise(width, height), num_crops)
        assert probes[num_crops].image_tokens(handed) == image_tokens(width, height, num_crops), name


@pytest.mark.parametrize("num_crops", CROPS)
def test_genai_hands_the_encoder_phi3_visions_crops_and_a_decimated_global_view(
    probes: dict[int, GenaiProbe], num_crops: int, normalisation: tuple[list[float], list[float]]
) -> None:
    """Known difference 2.  Once GenAI resizes as Phi-3-vision does, expect ``global_view(hd)`` here."""
    mean, std = normalisation
    one_level = 1.01 / (255 * min(std))  # one 8-bit level, and the probe's 0.6 % resolution
    for name, (width, height) in SIZES.items():
        pixels = random_noise(width, height)
        hd = normalised(hd_image(Image.fromarray(pixels), num_crops), mean, std)
        genai_views = np.concatenate([genai_global_view(hd)[None], crops(hd)])
        assert probes[num_crops].distance(pixels, genai_views) <= one_level, name
        if hd.shape[1:] != (336, 336):  # a single crop is its own global view; any larger HD image is resized
            assert np.abs(global_view(hd) - genai_global_view(hd)).max() > 3 * one_level, name
