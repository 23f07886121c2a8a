"""How close a photo's reading gets to this machine's compute ceiling: peak matrix throughput / operations it needs.

Reading a photo is two large computations: the vision encoder over its crops (CLIP ViT-L/14 at 336 px: 577 tokens
a crop, five crops at NUM_CROPS=4) and the language model's prompt (the 757 image tokens and the question, every
weight multiplied by every token).  Both are matrix products, so the CPU's peak matrix throughput in the precision
they run in bounds them.  Measured here, on all cores with the bot's CPU options:

- the ceiling: one large MatMul through OpenVINO (1024 x 4096 x 4096) with FP32 weights and activations, BF16
  (where the CPU has it: OpenVINO's default there), INT8 weights (per channel, as the smaller sub-models and part
  of the language model are compressed) and INT4 weights (group 64, as the language model's), the last two with
  the dynamic quantization of activations the engine uses;
- the achieved throughput: the full synthetic Phi-3.5-vision INT4's vision encoder on five crops and its language
  model on a 757-token prompt of embeddings, each timed alone through OpenVINO, with the operations each needs
  counted from the model's shapes (its config.json and CLIP's);
- decoding, one token at a time, against the same products with a single row (what a token's step multiplies:
  every weight once, unpacked), so it can be placed against compute as bandwidth_bound.py places it against
  memory.

Usage: python benchmarks/compute_bound.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bandwidth_bound import decode_speed
from benchmarks.common import bot_cpu_tuning, full_int4_model, write_results

M, K, N = 1024, 4096, 4096  # a prompt's worth of rows against a layer's weights
GROUP = 64  # the language model's INT4 group size (model_store/sources.py)
REPEATS = 5
CROPS = 5  # NUM_CROPS=4: four crops and the global view
CROP_TOKENS = 577  # 24 x 24 patches and the class token
PROMPT_TOKENS = 757  # a 4-crop photo's image tokens (README "Long images are padded")


def _properties(precision_hint: str | None) -> dict[str, Any]:
    properties: dict[str, Any] = dict(bot_cpu_tuning().properties())
    if precision_hint is not None:
        properties["INFERENCE_PRECISION_HINT"] = precision_hint
    return properties


def _weights(kind: str) -> Any:
    """A [N, K] weight as the converted model holds it: plain FP32, or compressed and unpacked in the graph."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    if kind == "f32":
        return ops.constant(rng.standard_normal((N, K)).astype(np.float32))
    if kind == "u8":  # per output channel, asymmetric: NNCF's INT8_ASYM
        packed = ops.constant(rng.integers(0, 256, (N, K)).astype(np.uint8))
        zero = ops.constant(np.full((N, 1), 128, np.uint8))
        scale = ops.constant(np.full((N, 1), 0.01, np.float16))
        unpacked = ops.subtract(ops.convert(packed, ov.Type.f16), ops.convert(zero, ov.Type.f16))
        return ops.convert(ops.multiply(unpacked, scale), ov.Type.f32)
    # u4 in groups of GROUP along K, asymmetric (the language model's INT4 layers)
    packed = ops.constant(rng.integers(0, 16, (N, K // GROUP, GROUP)).astype(np.uint8), ov.Type.u4)
    zero = ops.constant(np.full((N, K // GROUP, 1), 8, np.uint8), ov.Type.u4)
    scale = ops.constant(np.full((N, K // GROUP, 1), 0.01, np.float16))
    unpacked = ops.subtract(ops.convert(packed, ov.Type.f16), ops.convert(zero, ov.Type.f16))
    grouped = ops.multiply(unpacked, scale)
    flat = ops.reshape(grouped, ops.constant(np.array([N, K], np.int64)), special_zero=False)
    return ops.convert(flat, ov.Type.f32)


def matmul_gflops(kind: str, precision_hint: str | None, rows: int = M) -> float:
    """Best GFLOP/s of ``x @ W.T`` for one kind of weight, ``x`` of ``rows`` rows, with the bot's CPU options."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([rows, K], ov.Type.f32, name="x")
    model = ov.Model([ops.matmul(x, _weights(kind), False, True)], [x], f"matmul-{kind}")
    compiled = ov.Core().compile_model(model, "CPU", _properties(precision_hint))
    request = compiled.create_infer_request()
    data = np.random.default_rng(1).standard_normal((rows, K)).astype(np.float32)
    request.infer({0: data})
    best = min(_timed(lambda: request.infer({0: data})) for _ in range(REPEATS * (1 if rows > 1 else 20)))
    return 2 * rows * K * N / best / 1e9


def _timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def vision_operations(model: Path) -> float:
    """FLOPs of the vision encoder over CROPS crops: the patch embedding and the layers up to the second last,
    whose features Phi-3-vision takes (attention projections, attention, MLP)."""
    config = json.loads((model / "config.json").read_text())
    clip = json.loads((Path(config["img_processor"]["model_name"]) / "config.json").read_text())
    vision = clip.get("vision_config", clip)
    d, inner, layers = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"] - 1
    n = CROP_TOKENS
    per_layer = 4 * d * d * n + 2 * n * n * d + 2 * d * inner * n
    patches = (n - 1) * 3 * 14 * 14 * d
    return 2.0 * CROPS * (layers * per_layer + patches)


def prompt_operations(model: Path, tokens: int) -> float:
    """FLOPs of the language model reading ``tokens`` at once: every layer's projections and MLP for every token,
    causal attention (half of the square), and the logits the exported model computes for every position."""
    config = json.loads((model / "config.json").read_text())
    d, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = d * config["num_key_value_heads"] // config["num_attention_heads"]
    per_layer = (2 * d * d + 2 * d * kv) * tokens + 3 * d * inner * tokens + tokens * tokens * d
    return 2.0 * (layers * per_layer + d * config["vocab_size"] * tokens)


def vision_seconds(model: Path) -> float:
    import openvino as ov

    compiled = ov.Core().compile_model(str(model / "openvino_vision_embeddings_model.xml"), "CPU", _properties(None))
    pixels = np.random.default_rng(2).standard_normal((CROPS, 3, 336, 336)).astype(np.float32)
    request = compiled.create_infer_request()
    request.infer({0: pixels})
    return min(_timed(lambda: request.infer({0: pixels})) for _ in range(REPEATS))


def prompt_seconds(model: Path, tokens: int) -> float:
    import openvino as ov

    compiled = ov.Core().compile_model(str(model / "openvino_language_model.xml"), "CPU", _properties(None))
    request = compiled.create_infer_request()
    hidden = json.loads((model / "config.json").read_text())["hidden_size"]
    inputs = {
        "inputs_embeds": np.random.default_rng(3).standard_normal((1, tokens, hidden)).astype(np.float32) * 0.02,
        "attention_mask": np.ones((1, tokens), np.int64),
        "position_ids": np.arange(tokens, dtype=np.int64)[None, :],
        "beam_idx": np.zeros(1, np.int32),
    }

    def read() -> None:
        request.reset_state()  # a fresh prompt each time: nothing cached from the last
        request.infer(inputs)

    read()
    return min(_timed(read) for _ in range(REPEATS))


def main() -> None:
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    ceilings = {"fp32": matmul_gflops("f32", "f32")}
    if "BF16" in capabilities:
        ceilings["bf16"] = matmul_gflops("f32", "bf16")
    ceilings["int8 weights"] = matmul_gflops("u8", None)
    ceilings["int4 weights"] = matmul_gflops("u4", None)
    for name, value in ceilings.items():
        print(f"ceiling, {name:13}: {value:8.1f} GFLOP/s")
    model = full_int4_model()
    parts = {
        "vision encoder, 5 crops": (vision_operations(model), vision_seconds(model)),
        f"language model, {PROMPT_TOKENS}-token prompt": (
            prompt_operations(model, PROMPT_TOKENS),
            prompt_seconds(model, PROMPT_TOKENS),
        ),
    }
    achieved: dict[str, Any] = {}
    for name, (flops, seconds) in parts.items():
        rate = flops / seconds / 1e9
        ratios = {ceiling: round(rate / value, 3) for ceiling, value in ceilings.items()}
        achieved[name] = {"tflop": round(flops / 1e12, 3), "seconds": round(seconds, 3), "gflops": round(rate, 1)}
        achieved[name]["of_ceiling"] = ratios
        shown = ", ".join(f"{ratio:.0%} of {ceiling}" for ceiling, ratio in ratios.items())
        print(f"{name}: {flops / 1e12:.2f} TFLOP in {seconds:.2f} s = {rate:.1f} GFLOP/s ({shown})")
    one_row = {"int8 weights": matmul_gflops("u8", None, rows=1), "int4 weights": matmul_gflops("u4", None, rows=1)}
    tokens_per_second = decode_speed(model, properties=_properties(None))
    per_token = prompt_operations(model, 1)
    rate = tokens_per_second * per_token / 1e9
    decoding = {
        "tokens_per_second": round(tokens_per_second, 2),
        "gflop_per_token": round(per_token / 1e9, 2),
        "gflops": round(rate, 1),
        "of_one_row_ceiling": {name: round(rate / value, 3) for name, value in one_row.items()},
    }
    shown = ", ".join(f"{ratio:.0%} of {name}" for name, ratio in decoding["of_one_row_ceiling"].items())
    print("one-row ceiling: " + ", ".join(f"{name} {value:.1f} GFLOP/s" for name, value in one_row.items()))
    print(f"decoding: {tokens_per_second:.2f} tokens/s x {per_token / 1e9:.2f} GFLOP = {rate:.1f} GFLOP/s ({shown})")
    results = {
        "matmul": {"m": M, "k": K, "n": N, "int4_group": GROUP},
        "cpu_capabilities": list(capabilities),
        "ceilings_gflops": {name: round(value, 1) for name, value in ceilings.items()},
        "one_row_ceilings_gflops": {name: round(value, 1) for name, value in one_row.items()},
        "achieved": achieved,
        "decoding": decoding,
    }
    print(f"results: {write_results('compute_bound', results)}")


if __name__ == "__main__":
    main()
