"""OpenVINO CPU options that might matter on a small CPU, measured on the full synthetic INT4 model.

For each option set, in its own process (compiled blobs and memory do not leak between them), with the
pipeline the engine uses (continuous batching, prefix caching): prefill speed on a ~700-token text prompt,
cold image TTFT (640x480, num_crops 4), and decode speed.  GenAI's own metrics are used (first token, time
per output token), so held-back streamer text does not blur the numbers.

Usage: python benchmarks/cpu_options.py [--tokens 32] [--only "default,dyn-quant 64"] [--name cpu_options]
(KV_CACHE_PRECISION f32 is refused by this CPU plugin with continuous batching, so it is not in the list.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import full_int4_model, synthetic_photo, write_results

OPTION_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "dyn-quant off": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0},
    "dyn-quant 64": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 64},
    "dyn-quant 128": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128},
    "dyn-quant 32": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32},
    "kv-cache f16": {"KV_CACHE_PRECISION": "f16"},
    "1 thread": {"INFERENCE_NUM_THREADS": 1},
}
TEXT = (
    "A photograph shows a quiet harbour at dawn, with fishing boats tied along a wooden pier, gulls on the "
    "posts, nets drying in the early light, and a lighthouse on the far rocks. "
)


def _measure(options: dict[str, Any], tokens: int) -> dict[str, Any]:
    import openvino as ov
    import openvino_genai as genai

    scheduler = genai.SchedulerConfig()
    scheduler.enable_prefix_caching = True
    scheduler.cache_size = 4
    started = time.monotonic()
    pipeline = genai.VLMPipeline(str(full_int4_model()), "CPU", scheduler_config=scheduler, **options)
    load = time.monotonic() - started
    config = genai.GenerationConfig()
    config.max_new_tokens = tokens
    config.ignore_eos = True
    pipeline.generate("Hello", generation_config=config)  # first-call work is not what is measured

    text = pipeline.generate(TEXT * 20 + "What happens next?", generation_config=config).perf_metrics
    image = pipeline.generate(
        "What is in this image?", images=[ov.Tensor(synthetic_photo(11))], generation_config=config
    ).perf_metrics
    return {
        "load_seconds": round(load, 1),
        "text_input_tokens": int(text.get_num_input_tokens()),
        "prefill_tokens_per_second": round(text.get_num_input_tokens() / (text.get_ttft().mean / 1000), 1),
        "image_ttft_seconds": round(image.get_ttft().mean / 1000, 2),
        "vision_seconds": round(sum(image.vlm_raw_metrics.prepare_embeddings_durations) / 1e6, 2),
        "decode_tokens_per_second": round(1000 / text.get_tpot().mean, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--only", help="comma-separated option-set names (default: all)")
    parser.add_argument("--name", default="cpu_options", help="results file name")
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.options is not None:
        print(json.dumps(_measure(json.loads(args.options), args.tokens)))
        return
    full_int4_model()
    rows: dict[str, Any] = {}
    chosen = args.only.split(",") if args.only else list(OPTION_SETS)
    for name in chosen:
        options = OPTION_SETS[name]
        print(f"running {name} ...", flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--options", json.dumps(options), "--tokens", str(args.tokens)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            rows[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
            print(f"  failed: {rows[name]['error']}")
            continue
        rows[name] = {"options": options, **json.loads(done.stdout.strip().splitlines()[-1])}
    print(
        f"\n{'options':<15}{'load s':>8}{'prefill tok/s':>15}{'image TTFT s':>14}{'vision s':>10}{'decode tok/s':>14}"
    )
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:<15} failed: {row['error']}")
            continue
        print(
            f"{name:<15}{row['load_seconds']:>8}{row['prefill_tokens_per_second']:>15}{row['image_ttft_seconds']:>14}"
            f"{row['vision_seconds']:>10}{row['decode_tokens_per_second']:>14}"
        )
    print(f"results: {write_results(args.name, {'tokens': args.tokens, 'option_sets': rows})}")


if __name__ == "__main__":
    main()
