"""What the NUM_CROPS setting costs: image tokens and cold time to first token, full synthetic INT4 model.

Photos go in as the engine hands them to GenAI (engine.images.for_genai: padded to a square crop grid).

Usage: python benchmarks/crops_cost.py [--dynamic-quantization N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    FirstChunkTimer,
    add_dynamic_quantization_option,
    chosen_cpu_tuning,
    full_int4_model,
    synthetic_photo,
    write_results,
)
from engine.images import for_genai
from model_store.loader import crops_view

SIZES = ((640, 480), (1344, 1008))
CROPS = (4, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dynamic_quantization_option(parser)
    args = parser.parse_args()
    properties = chosen_cpu_tuning(args).properties()
    import openvino as ov
    import openvino_genai as genai

    from model_store.store import ModelEntry

    model = full_int4_model()
    entry = ModelEntry(slug="bench", precision="int4", path=model, manifest={})
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as views:
        for crops in CROPS:
            pipeline = genai.VLMPipeline(str(crops_view(entry, crops, Path(views))), "CPU", **properties)
            config = genai.GenerationConfig()
            config.max_new_tokens = 4
            config.ignore_eos = True
            pipeline.generate("Hello", generation_config=config)  # first-call compilation is not the image's cost
            for width, height in SIZES:
                timer = FirstChunkTimer()
                image = ov.Tensor(for_genai(synthetic_photo(5, width, height), crops))
                result = pipeline.generate(
                    "What is in this image?", images=[image], generation_config=config, streamer=timer
                )
                metrics = result.perf_metrics
                rows.append(
                    {
                        "num_crops": crops,
                        "image": f"{width}x{height}",
                        "input_tokens": int(metrics.get_num_input_tokens()),
                        "ttft_seconds": round(metrics.get_ttft().mean / 1000, 1),
                        "first_text_seconds": round(timer.ttft, 1),
                        "vision_seconds": round(sum(metrics.vlm_raw_metrics.prepare_embeddings_durations) / 1e6, 1),
                    }
                )
                print(rows[-1], flush=True)
            del pipeline
    print(f"\n{'num_crops':>9} {'image':>10} {'input tokens':>13} {'TTFT s':>7} {'vision s':>9}")
    for row in rows:
        print(
            f"{row['num_crops']:>9} {row['image']:>10} {row['input_tokens']:>13} {row['ttft_seconds']:>7} "
            f"{row['vision_seconds']:>9}"
        )
    print(f"results: {write_results('crops_cost', {**properties, 'rows': rows})}")


if __name__ == "__main__":
    main()
