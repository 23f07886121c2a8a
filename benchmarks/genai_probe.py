"""What OpenVINO GenAI makes of an image: its prompt positions and its vision encoder's input, read from outside.

GenAI prepares Phi-3-vision's images inside its pipeline and reports neither the pixels it hands the vision
encoder nor an image's token count; the one number it reports back is the prompt's length.  So a probe runs
GenAI on a view of a converted model (tokenizer, text embeddings and language model linked from it) with two
stand-in vision models, and reads that length:

* to count an image's positions, the stand-in projection keeps its input's length, as the real one does;
* to see the encoder's input, the stand-in encoder compares the views GenAI made (global view first, then the
  crops, padded with zero views) with an expected tensor and writes the largest or mean absolute difference
  into every feature, and the stand-in projection turns that number into a length: 200 steps per decade from
  1e-6 to 100, so a distance reads back to within 0.6 %.

The text around the image takes the same positions in every call; a probe whose image is one position long
measures them once.  Each distance compiles a small pipeline (about half a second for the tiny model).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.images import CROP
from model_store.loader import crops_view
from model_store.store import ModelEntry

VISION_FILES = ("openvino_vision_embeddings_model", "openvino_vision_projection_model")
FEATURES = (576, 1024)  # per view: 24 x 24 CLIP patches of 1024 values, as GenAI's HD feature transform expects
STEPS_PER_DECADE = 200
SMALLEST = 1e-6  # distances below read as 0
DECADES = 8  # up to 100


def genai_global_view(hd: np.ndarray) -> np.ndarray:
    """The global view GenAI 2026.4 makes of a normalised HD image (3 x H x W): every (H / 336)-th row and
    (W / 336)-th column, from the first.

    GenAI resizes with OpenVINO's cubic interpolation (coefficient -0.5, asymmetric coordinates), and an HD image
    is always a whole number of crops, so every output pixel lands exactly on a source pixel: a decimation without
    filtering, where Phi-3-vision's bicubic resize (half-pixel centres) blends neighbours.
    """
    return np.ascontiguousarray(hd[:, :: hd.shape[1] // CROP, :: hd.shape[2] // CROP])


@contextmanager
def _vision_preprocess(value: str | None) -> Iterator[None]:
    """GenAI reads VISION_PREPROCESS (``CPP``: its C++ code instead of the OpenVINO graph) when a pipeline is built."""
    previous = os.environ.pop("VISION_PREPROCESS", None)
    if value is not None:
        os.environ["VISION_PREPROCESS"] = value
    try:
        yield
    finally:
        os.environ.pop("VISION_PREPROCESS", None)
        if previous is not None:
            os.environ["VISION_PREPROCESS"] = previous


def _ints(*values: int) -> Any:
    import openvino.opset13 as ops

    return ops.constant(np.array(values, np.int64))


def _encoder(expected: np.ndarray | None, first_view: int, reduction: Literal["max", "mean"]) -> Any:
    """A vision encoder whose every feature is the distance of views ``first_view``... from ``expected`` (or 0)."""
    import openvino as ov
    import openvino.opset13 as ops

    views = ops.parameter([-1, 3, CROP, CROP], ov.Type.f32, name="pixel_values")
    if expected is None:
        distance: Any = ops.constant(np.float32(0))
    else:
        compared = ops.slice(views, _ints(first_view), _ints(first_view + len(expected)), _ints(1))
        difference = ops.abs(ops.subtract(compared, ops.constant(np.ascontiguousarray(expected, np.float32))))
        reduce = ops.reduce_max if reduction == "max" else ops.reduce_mean
        distance = reduce(difference, _ints(0, 1, 2, 3))
    count = ops.gather(ops.shape_of(views), _ints(0), ops.constant(np.int64(0)))
    features = ops.broadcast(distance, ops.concat([count, _ints(*FEATURES)], 0))
    return ov.Model([ops.result(features)], [views], "probe_vision_embeddings")


def _projection(hidden_size: int, *, encode_distance: bool) -> Any:
    """A projection that keeps its input's length, or whose length encodes the distance in its first value."""
    import openvino as ov
    import openvino.opset13 as ops

    merged = ops.parameter([-1, -1, 4 * FEATURES[1]], ov.Type.f32, name="input")
    if encode_distance:
        first = ops.reshape(ops.slice(merged, _ints(0, 0, 0), _ints(1, 1, 1), _ints(1, 1, 1)), _ints(1), False)
        decades = ops.log(ops.maximum(first, ops.constant(np.float32(SMALLEST))))
        steps = ops.multiply(decades, ops.constant(np.float32(STEPS_PER_DECADE / math.log(10))))
        steps = ops.subtract(steps, ops.constant(np.float32(STEPS_PER_DECADE * math.log10(SMALLEST))))
        steps = ops.clamp(ops.round(steps, "half_to_even"), 0, STEPS_PER_DECADE * DECADES)
        length: Any = ops.add(ops.convert(steps, ov.Type.i64), _ints(1))
    else:
        length = ops.gather(ops.shape_of(merged), _ints(1), ops.constant(np.int64(0)))
    shape = ops.concat([_ints(1), length, _ints(hidden_size)], 0)
    return ov.Model([ops.result(ops.broadcast(ops.constant(np.float32(0)), shape))], [merged], "probe_projection")


class GenaiProbe:
    """GenAI's preprocessing of Phi-3-vision images at ``num_crops``, read on a converted model's text parts.

    ``vision_preprocess`` is GenAI's VISION_PREPROCESS: None for its default (an OpenVINO graph), ``"CPP"`` for
    its C++ code; ``properties`` are OpenVINO's, for every pipeline the probe compiles.
    """

    def __init__(
        self,
        entry: ModelEntry,
        work_dir: Path,
        num_crops: int,
        *,
        vision_preprocess: str | None = None,
        properties: dict[str, Any] | None = None,
    ) -> None:
        self._preprocess = vision_preprocess
        self._properties = properties or {}
        self._work_dir = work_dir
        self._source = crops_view(entry, num_crops, work_dir / "views")
        self._hidden_size = int(json.loads((entry.path / "config.json").read_text())["hidden_size"])
        self._counter = self._pipeline(_encoder(None, 0, "max"), _projection(self._hidden_size, encode_distance=False))
        calibration = self._pipeline(_encoder(None, 0, "max"), _projection(self._hidden_size, encode_distance=True))
        self._text_positions = self._prompt_length(calibration, np.full((CROP, CROP, 3), 255, np.uint8)) - 1

    def image_tokens(self, pixels: np.ndarray) -> int:
        """Prompt positions GenAI gives the image (H x W x 3, uint8)."""
        return self._prompt_length(self._counter, pixels) - self._text_positions

    def distance(
        self,
        pixels: np.ndarray,
        expected: np.ndarray,
        *,
        first_view: int = 0,
        reduction: Literal["max", "mean"] = "max",
    ) -> float:
        """Largest (or mean) absolute difference between ``expected`` [views, 3, 336, 336] and the views GenAI
        hands the vision encoder for the image, from view ``first_view`` (0 is the global view); 0.0 below 1e-6."""
        pipeline = self._pipeline(
            _encoder(expected, first_view, reduction), _projection(self._hidden_size, encode_distance=True)
        )
        steps = self._prompt_length(pipeline, pixels) - self._text_positions - 1
        return 0.0 if steps <= 0 else SMALLEST * 10 ** (steps / STEPS_PER_DECADE)

    def timer(self, vision_embeddings: Path) -> Callable[[np.ndarray], float]:
        """A function timing GenAI turning an image into embeddings with a real vision encoder (``vision_embeddings``,
        an IR .xml): its preprocessing, the encoder and the HD feature transform, in seconds (the stand-in
        projection and the text add little)."""
        import openvino as ov

        pipeline = self._pipeline(
            ov.Core().read_model(vision_embeddings), _projection(self._hidden_size, encode_distance=False)
        )

        def seconds(pixels: np.ndarray) -> float:
            return self._generate(pipeline, pixels).vlm_raw_metrics.prepare_embeddings_durations[-1] / 1e6

        return seconds

    def _pipeline(self, encoder: Any, projection: Any) -> Any:
        import openvino as ov
        import openvino_genai as genai

        view = Path(tempfile.mkdtemp(prefix="probe-", dir=self._work_dir))
        try:
            for item in self._source.iterdir():
                if not item.name.startswith(VISION_FILES):
                    (view / item.name).symlink_to(item.resolve())
            for name, model in zip(VISION_FILES, (encoder, projection), strict=True):
                ov.save_model(model, view / f"{name}.xml", compress_to_fp16=False)
            with _vision_preprocess(self._preprocess):
                return genai.VLMPipeline(str(view), "CPU", **self._properties)
        finally:
            shutil.rmtree(view)  # the pipeline has read everything it needs

    def _prompt_length(self, pipeline: Any, pixels: np.ndarray) -> int:
        return int(self._generate(pipeline, pixels).get_num_input_tokens())

    @staticmethod
    def _generate(pipeline: Any, pixels: np.ndarray) -> Any:
        """GenAI's performance metrics of one new token about the image."""
        import openvino as ov
        import openvino_genai as genai

        config = genai.GenerationConfig()
        config.max_new_tokens = 1
        image = ov.Tensor(np.ascontiguousarray(pixels, np.uint8))
        return pipeline.generate("Describe.", images=[image], generation_config=config).perf_metrics
