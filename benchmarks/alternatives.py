"""The project's engine against what a self-hoster could run instead, in one run on this machine (issue 5).

Variants, each in its own process (so load time and peak memory are its own), on the full-size synthetic
Phi-3.5-vision:
* ``engine``: this project's engine (OpenVINO GenAI, INT4, the bot's default settings);
* ``genai``: raw ``openvino_genai.VLMPipeline`` in chat mode on the same INT4 model and CPU options;
* ``optimum``: the seed notebook's approach, OpenVINO sub-models driven by transformers' ``generate`` through
  optimum-intel's ``OVModelForVisualCausalLM``, same INT4 model and CPU options;
* ``pytorch-bf16``: the checkpoint in PyTorch transformers, eager, bf16, on the CPU.

Same prompt, images and number of new tokens for all.  Per variant: load time, cold image TTFT for a 640x480 and
a 1344x1008 image at NUM_CROPS 4 and 16, follow-up TTFT (the 640x480 conversation, one more question), decode
tokens/s and peak RSS; ratios against the engine are printed.

Usage: python benchmarks/alternatives.py [--tokens 32] [--variants engine,genai,optimum,pytorch-bf16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    FirstChunkTimer,
    bot_cpu_tuning,
    full_checkpoint,
    full_int4_model,
    png,
    synthetic_photo,
    timed_answer,
    write_results,
)

VARIANTS = ("engine", "genai", "optimum", "pytorch-bf16")
SIZES = ((640, 480), (1344, 1008))
CROPS = (4, 16)
QUESTION = "What is in this image?"
FOLLOW_UP = "And what colour is it?"
CPU = bot_cpu_tuning()  # the same for every OpenVINO variant


@dataclass(frozen=True)
class Models:
    """The Hugging Face checkpoint (for PyTorch) and its INT4 OpenVINO conversion (for everything else)."""

    checkpoint: Path
    ir: Path


@dataclass(frozen=True)
class Measured:
    ttft: float
    seconds: float
    generated: int
    input_tokens: int
    text: str

    @property
    def decode_tps(self) -> float:
        return (self.generated - 1) / (self.seconds - self.ttft) if self.seconds > self.ttft else float("nan")


class Variant(Protocol):
    def load(self, num_crops: int, *, restart: bool = False) -> float:
        """Make the model ready for this number of crops (``restart``: load it again anyway); seconds taken."""

    def ask(self, question: str, image: Any | None, *, new_conversation: bool) -> Measured:
        """One question (with a photo: HWC uint8), continuing the conversation unless told otherwise."""


class EngineVariant:
    def __init__(self, models: Models, tokens: int, workdir: Path) -> None:
        from engine.generation import GenerationSettings

        self.models = models
        self.settings = GenerationSettings(max_new_tokens=tokens, ignore_eos=True)
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self.engine: Any = None
        self.past: list[Any] = []

    def load(self, num_crops: int, *, restart: bool = False) -> float:
        from engine.engine import Engine
        from engine.pipeline_process import load_pipeline
        from model_store.loader import pipeline_spec
        from model_store.store import ModelEntry

        entry = ModelEntry(slug="bench", precision="int4", path=self.models.ir, manifest={})
        if self.engine is not None:
            self.loop.run_until_complete(self.engine.aclose())
            self.engine = None
        started = time.monotonic()
        loaded = load_pipeline(
            pipeline_spec(entry, views_dir=self.workdir / "views", num_crops=num_crops, kv_cache_gb=4, cpu=CPU)
        )
        self.engine = Engine(loaded, self.settings)
        return time.monotonic() - started

    def ask(self, question: str, image: Any | None, *, new_conversation: bool) -> Measured:
        return self.loop.run_until_complete(self._ask(question, image, new_conversation))

    async def _ask(self, question: str, image: Any | None, new_conversation: bool) -> Measured:
        from bot.media.decoding import prepare_image
        from engine.conversation import Turn

        images = (prepare_image(png(image)),) if image is not None else ()
        if new_conversation:
            self.past = []
        turn = Turn(role="user", text=question, images=images)
        answer = await timed_answer(self.engine, "bench", self.past, turn)
        finished = answer.finished
        assert finished.status == "complete", finished
        self.past += [turn, Turn(role="assistant", text=finished.text)]
        return Measured(
            answer.first_text or float("nan"),
            answer.seconds,
            finished.report.generated_tokens,
            finished.report.input_tokens,
            finished.text,
        )


class GenAIVariant:
    def __init__(self, models: Models, tokens: int, workdir: Path) -> None:
        self.models = models
        self.tokens = tokens
        self.workdir = workdir
        self.pipeline: Any = None
        self.history: Any = None

    def load(self, num_crops: int, *, restart: bool = False) -> float:
        import openvino_genai as genai

        from model_store.loader import crops_view
        from model_store.store import ModelEntry

        entry = ModelEntry(slug="bench", precision="int4", path=self.models.ir, manifest={})
        path = crops_view(entry, num_crops, self.workdir / "views")
        self.pipeline = None
        started = time.monotonic()
        self.pipeline = genai.VLMPipeline(str(path), "CPU", **CPU.properties())
        return time.monotonic() - started

    def ask(self, question: str, image: Any | None, *, new_conversation: bool) -> Measured:
        import openvino as ov
        import openvino_genai as genai

        if new_conversation or self.history is None:
            self.history = genai.ChatHistory()
        config = genai.GenerationConfig()
        config.max_new_tokens = self.tokens
        config.ignore_eos = True
        self.history.append({"role": "user", "content": question})
        timer = FirstChunkTimer()
        images = [ov.Tensor(image)] if image is not None else []
        result = self.pipeline.generate(self.history, images=images, generation_config=config, streamer=timer)
        seconds = time.monotonic() - timer.started
        self.history.append({"role": "assistant", "content": result.texts[0]})
        metrics = result.perf_metrics
        return Measured(
            timer.ttft,
            seconds,
            int(metrics.get_num_generated_tokens()),
            int(metrics.get_num_input_tokens()),
            result.texts[0],
        )


class TransformersVariant:
    """Drives a model through transformers' ``generate`` with the whole conversation each time (no KV reuse)."""

    def __init__(self, models: Models, tokens: int, kind: str) -> None:
        self.models = models
        self.tokens = tokens
        self.kind = kind
        self.model: Any = None
        self.tokenizer: Any = None
        self.num_crops = 4
        self.conversation: list[dict[str, str]] = []
        self.image: Any = None

    def load(self, num_crops: int, *, restart: bool = False) -> float:
        self.num_crops = num_crops  # crops are the processor's business, not the model's
        if self.model is not None and not restart:
            return 0.0
        self.model = None
        from transformers import AutoTokenizer

        source = self.models.ir if self.kind == "optimum" else self.models.checkpoint
        self.preprocessor = json.loads((source / "preprocessor_config.json").read_text())
        started = time.monotonic()
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        if self.kind == "optimum":
            from optimum.intel import OVModelForVisualCausalLM

            self.model = OVModelForVisualCausalLM.from_pretrained(
                source, trust_remote_code=True, ov_config=CPU.properties()
            )
        else:
            import torch
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(
                source, torch_dtype=torch.bfloat16, trust_remote_code=True
            ).eval()
        return time.monotonic() - started

    def ask(self, question: str, image: Any | None, *, new_conversation: bool) -> Measured:
        import torch
        from PIL import Image

        from benchmarks.phi3v_inputs import build_inputs

        if new_conversation:
            self.conversation, self.image = [], None
        if image is not None:
            self.image = Image.fromarray(image)
        self.conversation.append({"role": "user", "content": question})
        inputs = build_inputs(
            self.tokenizer,
            self.conversation,
            self.image,
            num_crops=self.num_crops,
            mean=self.preprocessor["image_mean"],
            std=self.preprocessor["image_std"],
        )
        timer = _StreamTimer()
        with torch.inference_mode():
            output = self.model.generate(
                **inputs.as_kwargs(),
                max_new_tokens=self.tokens,
                min_new_tokens=self.tokens,
                do_sample=False,
                streamer=timer,
            )
        seconds = time.monotonic() - timer.started
        prompt_length = inputs.input_ids.shape[1]
        generated = output[0, prompt_length:] if output.shape[1] > prompt_length else output[0]
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        self.conversation.append({"role": "assistant", "content": text})
        return Measured(timer.ttft, seconds, len(generated), prompt_length, text)


class _StreamTimer:
    """A transformers streamer: the first ``put`` is the prompt, the second the first new token."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.calls = 0
        self.first: float | None = None

    def put(self, _: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first = time.monotonic() - self.started

    def end(self) -> None:
        pass

    @property
    def ttft(self) -> float:
        return self.first if self.first is not None else float("nan")


def make_variant(name: str, models: Models, tokens: int, workdir: Path) -> Variant:
    if name == "engine":
        return EngineVariant(models, tokens, workdir)
    if name == "genai":
        return GenAIVariant(models, tokens, workdir)
    return TransformersVariant(models, tokens, "optimum" if name == "optimum" else "pytorch")


def cases() -> Iterator[tuple[int, int, int]]:
    for crops in CROPS:
        for width, height in SIZES:
            yield crops, width, height


def run_variant(name: str, models: Models, tokens: int) -> dict[str, Any]:
    results: dict[str, Any] = {"cold": {}}
    with tempfile.TemporaryDirectory() as workdir:
        variant = make_variant(name, models, tokens, Path(workdir))
        loaded_crops = None
        seed = 10
        for crops, width, height in cases():
            if crops != loaded_crops:
                seconds = variant.load(crops)
                results.setdefault("load_seconds", round(seconds, 1))
                variant.ask("Hello", None, new_conversation=True)  # first-call compilation is not an image's cost
                loaded_crops = crops
            seed += 1
            answer = variant.ask(QUESTION, synthetic_photo(seed, width, height), new_conversation=True)
            results["cold"][f"{width}x{height}, {crops} crops"] = {
                "ttft": round(answer.ttft, 2),
                "input_tokens": answer.input_tokens,
            }
            print(f"{name}: {width}x{height}, {crops} crops: TTFT {answer.ttft:.1f} s", file=sys.stderr, flush=True)
            if (crops, width, height) == (CROPS[0], *SIZES[0]):
                results["decode_tps"] = round(answer.decode_tps, 2)
                follow = variant.ask(FOLLOW_UP, None, new_conversation=False)
                results["follow_up"] = {"ttft": round(follow.ttft, 2), "input_tokens": follow.input_tokens}
        results["restart_load_seconds"] = round(
            variant.load(CROPS[0], restart=True), 1
        )  # OpenVINO's model cache is warm now
    # The engine's model runs in child processes; those that did the work have exited by now (the restart load
    # closed them), so the largest one's peak is added to this process's own.
    peak_kib = sum(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    results["peak_rss_gb"] = round(peak_kib / 1024**2, 2)
    return results


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:5.1f}x" if reference and value == value else "    -"


def print_table(results: dict[str, dict[str, Any]]) -> None:
    names = list(results)
    reference = results.get("engine")
    rows: list[tuple[str, Any]] = [
        ("first load, s", lambda r: r["load_seconds"]),
        ("load after a restart, s", lambda r: r["restart_load_seconds"]),
    ]
    for crops, width, height in cases():
        key = f"{width}x{height}, {crops} crops"
        rows.append((f"cold TTFT {key}, s", lambda r, key=key: r["cold"][key]["ttft"]))
    rows += [
        ("follow-up TTFT, s", lambda r: r["follow_up"]["ttft"]),
        ("decode, tokens/s", lambda r: r["decode_tps"]),
        ("peak RSS, GB", lambda r: r["peak_rss_gb"]),
    ]
    print(f"\n{'':<34}" + "".join(f"{name:>22}" for name in names))
    for label, pick in rows:
        line = f"{label:<34}"
        for name in names:
            value = pick(results[name])
            ratio = _ratio(value, pick(reference)) if reference is not None and name != "engine" else "      "
            line += f"{value:>14.2f} {ratio:>7}"
        print(line)
    print("(ratios: variant / engine; for decode, higher is better)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--checkpoint", type=Path, help="a Hugging Face checkpoint (default: the full synthetic one)")
    parser.add_argument("--ir", type=Path, help="its INT4 OpenVINO model (default: the full synthetic one's)")
    parser.add_argument("--name", default="alternatives", help="results file name")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (args.checkpoint is None) != (args.ir is None):
        parser.error("give both --checkpoint and --ir, or neither")
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    # built and converted once, before timing anything
    models = Models(args.checkpoint or full_checkpoint(), args.ir or full_int4_model())
    if args.variant:
        print(json.dumps(run_variant(args.variant, models, args.tokens)))
        return
    results: dict[str, Any] = {}
    for name in variants:
        print(f"running {name} ...", flush=True)
        command = [sys.executable, __file__, "--variant", name, "--tokens", str(args.tokens)]
        command += ["--checkpoint", str(models.checkpoint), "--ir", str(models.ir)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print_table(results)
    settings = {"tokens": args.tokens, "checkpoint": str(models.checkpoint), "ir": str(models.ir)}
    print(f"results: {write_results(args.name, {**settings, 'variants': results})}")


if __name__ == "__main__":
    main()
