"""Long conversations: time to first text at every turn, the engine against raw OpenVINO GenAI (issue 12).

Two chats take turns for ``--turns`` turns each, with a typing pause before every question: chat A asks
about photos at turns 1, 6 and 25, chat B at turn 1; at turn 12 A sends a photo alone and asks about it 15 s
later; after turn 20 both are restarted: the engine reads B's conversation again (the most recent first, as
the bot does at start), B asks while A's is being read, then A asks once A's is read; at the end a third
chat sends a photo alone and A asks 3 s later, while that photo is read.  Answers are 32 tokens.

The engine variant keeps each chat's history under the bot's context policy (engine/conversation_memory.py)
and, as the bot does, has the model read each conversation ahead after every answer, and the view after its
coming step once that is planned (``--no-step-ahead``: only once the step is taken, the earlier way).  The raw
variant is OpenVINO GenAI's ContinuousBatchingPipeline with prefix caching and one ChatHistory per chat, given
the very prompts the engine run saw (read from its results); when a prompt no longer starts as the previous one
did, it starts a new ChatHistory and sends the photo messages again, as GenAI attaches images only to the last
user message.  Each variant runs in its own process.

Goals (full-size synthetic INT4): follow-ups median <= 1.5 s and 95th percentile <= 3 s, the slowest of them
(a step of the policy included) <= 3 s up to turn 40; the question 15 s after a photo sent alone <= 2 s; the
first follow-ups after a restart <= 3 s.  Also printed: how long a
question waited in the model's process behind work read ahead (one piece at most: a piece of text, or a
photo, which GenAI encodes and reads in one call).

Usage: python benchmarks/long_conversation.py [--turns 40] [--typing 5] [--history-tokens N] [--model DIR]
       [--name NAME] [--no-step-ahead]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bot_cpu_tuning, full_int4_model, png, synthetic_photo, write_results

TOKENS = 32
PHOTO_TURNS = {("A", 1): 3, ("A", 6): 5, ("A", 25): 9, ("B", 1): 7}
ALONE_TURN, ALONE_SEED, ALONE_WAIT = 12, 11, 15.0
OTHER_SEED, OTHER_WAIT = 13, 3.0
RESTART_AFTER = 20


@dataclass(frozen=True)
class Step:
    chat: str
    turn: int

    @property
    def name(self) -> str:
        return f"{self.chat}{self.turn}"

    @property
    def photo(self) -> int | None:
        return PHOTO_TURNS.get((self.chat, self.turn))

    @property
    def question(self) -> str:
        if self.photo is not None:
            return "What is in this photo? Please describe what you see."
        return f"Question {self.turn} from chat {self.chat}: what else can you tell me about the colours and shapes?"


def plan(turns: int) -> list[Step]:
    """Turns in order: after the restart B asks first (while A is still read again); a last turn of A's is
    asked while a third chat's photo sent alone is read."""
    steps = [Step(chat, turn) for turn in range(1, turns + 1) for chat in ("BA" if turn == RESTART_AFTER + 1 else "AB")]
    return [*steps, Step("A", turns + 1)]


def _system_prompt() -> str:
    from bot.settings import Settings

    return str(Settings.model_fields["system_prompt"].default)


def _photo(seed: int) -> Any:
    from bot.media.decoding import prepare_image

    return prepare_image(png(synthetic_photo(seed)))


# --- the engine, as the bot drives it -----------------------------------------------------------------------


async def _engine(
    model: Path, turns: int, typing: float, history_tokens: int | None, step_ahead: bool
) -> dict[str, Any]:
    from bot.settings import Settings
    from engine.context_policy import default_history_tokens, kv_cache_tokens
    from engine.conversation import Turn
    from engine.conversation_memory import ConversationMemory
    from engine.engine import Engine
    from engine.generation import GenerationSettings
    from engine.pipeline_process import load_pipeline
    from model_store.layout import read_json
    from model_store.loader import pipeline_spec
    from model_store.store import ModelEntry

    entry = ModelEntry(slug="bench", precision="int4", path=model, manifest={})
    spec = pipeline_spec(entry, kv_cache_gb=4, cpu=bot_cpu_tuning())
    settings = GenerationSettings(max_new_tokens=TOKENS, system_prompt=_system_prompt(), ignore_eos=True)

    budget = history_tokens
    if budget is None:  # the bot's own default: derived for its MAX_NEW_TOKENS, not for these short answers
        bot_answers = int(Settings.model_fields["max_new_tokens"].default)
        kv_tokens = kv_cache_tokens(read_json(model / "config.json"), kv_cache_gb=4, device="CPU")
        budget = default_history_tokens(
            read_json(model / "config.json"), kv_tokens=kv_tokens, batch_size=4, max_new_tokens=bot_answers
        )

    async def start() -> Engine:
        return Engine(await asyncio.to_thread(load_pipeline, spec), settings, batch_max=4, history_tokens=budget)

    engine = await start()
    memories = {chat: ConversationMemory(budget, settings.system_prompt, engine.model.num_crops) for chat in "AB"}
    reading: set[asyncio.Task[Any]] = set()
    seeds: dict[str, int] = {}  # image sha256 -> seed, to write prompts down
    results: dict[str, Any] = {"history_tokens": budget, "turns": {}, "prompts": {}}

    def read_ahead(chat: str) -> None:
        views = [(memories[chat].view(), False)]
        if step_ahead and (next_view := memories[chat].next_view()) is not None:
            views.append((next_view, True))  # the view after the coming step, as the bot reads it
        for view, ahead in views:
            task = asyncio.create_task(engine.prepare(chat, view, ahead=ahead))
            reading.add(task)
            task.add_done_callback(reading.discard)

    def written(turns_: list[Any]) -> list[list[Any]]:
        return [[t.role, t.text, [seeds[i.sha256] for i in t.images]] for t in turns_]

    last = plan(turns)[-1]
    warming: asyncio.Task[Any] | None = None
    for step in plan(turns):
        if step.turn == RESTART_AFTER + 1 and step.chat == "B":
            await engine.aclose()
            started = time.monotonic()
            engine = await start()
            loaded = time.monotonic() - started
            b_warm = (await engine.prepare("B", memories["B"].view())).seconds  # the most recent first, as the bot
            warming = asyncio.create_task(engine.prepare("A", memories["A"].view()))
            results["restart"] = {"load_seconds": round(loaded, 2), "warm_up_seconds": {"B": round(b_warm, 2)}}
        if step.turn == RESTART_AFTER + 1 and step.chat == "A" and warming is not None:
            results["restart"]["warm_up_seconds"]["A"] = round((await warming).seconds, 2)
        if step == last:  # a third chat sends a photo alone; A asks while it is read
            image = _photo(OTHER_SEED)
            seeds[image.sha256] = OTHER_SEED
            memories.setdefault("C", ConversationMemory(budget, settings.system_prompt, engine.model.num_crops))
            memories["C"].add(Turn("user", "", (image,)))
            read_ahead("C")
            await asyncio.sleep(OTHER_WAIT)
        elif step.chat == "A" and step.turn == ALONE_TURN:  # the photo first, the question 15 s later
            await asyncio.sleep(typing)
            image = _photo(ALONE_SEED)
            seeds[image.sha256] = ALONE_SEED
            memories["A"].add(Turn("user", "", (image,)))
            read_ahead("A")
            await asyncio.sleep(ALONE_WAIT)
        else:
            await asyncio.sleep(typing)
        images = ()
        if step.photo is not None:
            image = _photo(step.photo)
            seeds[image.sha256] = step.photo
            images = (image,)
        question = Turn("user", step.question, images)
        view = memories[step.chat].view()
        results["prompts"][step.name] = {"view": written(view), "question": written([question])[0]}
        timed = await _timed(engine, step.chat, view, question)
        memories[step.chat].record(question, timed["finished"])
        read_ahead(step.chat)
        results["turns"][step.name] = {key: value for key, value in timed.items() if key != "finished"}
    await engine.aclose()
    return results


async def _timed(engine: Any, chat: str, view: list[Any], question: Any) -> dict[str, Any]:
    from benchmarks.common import timed_answer

    answer = await timed_answer(engine, chat, view, question)
    finished = answer.finished
    assert finished.status == "complete", finished
    return {
        "ttft": round(answer.first_text or 0.0, 2),
        "waited": round(finished.report.waited_seconds, 2),
        "replays": finished.report.replays,
        "vision_seconds": round(finished.report.vision_seconds, 2),
        "input_tokens": finished.report.input_tokens,
        "finished": finished,
    }


# --- raw GenAI, given the same prompts ----------------------------------------------------------------------


def _raw(model: Path, prompts: dict[str, Any], typing: float) -> dict[str, Any]:
    import openvino as ov
    import openvino_genai as genai

    from engine.images import for_genai
    from model_store.loader import prefix_caching_scheduler

    def load() -> Any:
        properties = bot_cpu_tuning().properties()
        return genai.ContinuousBatchingPipeline(str(model), prefix_caching_scheduler(4), "CPU", properties)

    pipeline = load()
    num_crops = 4
    tensors = {
        seed: ov.Tensor(for_genai(synthetic_photo(seed), num_crops)) for seed in {*PHOTO_TURNS.values(), ALONE_SEED}
    }
    system = {"role": "system", "content": _system_prompt()}
    chats: dict[str, tuple[Any, list[Any]]] = {}
    results: dict[str, Any] = {"turns": {}}

    def generate(history: Any, messages: list[Any], seeds: list[int], tokens: int, on_text: Any) -> Any:
        history.set_messages([system, *({"role": r, "content": t} for r, t, _ in messages)])
        config = genai.GenerationConfig()
        config.max_new_tokens = tokens
        config.ignore_eos = True
        return pipeline.generate([history], [[tensors[s] for s in seeds]], [config], on_text)[0]

    for step in plan(max(int(name[1:]) for name in prompts) - 1):
        if step.turn == RESTART_AFTER + 1 and step.chat == "B":
            del pipeline
            chats.clear()
            started = time.monotonic()
            pipeline = load()
            results["restart"] = {"load_seconds": round(time.monotonic() - started, 2)}
        time.sleep(typing)  # nothing is read ahead here: the pause only keeps the machine's rhythm
        prompt = prompts[step.name]
        wanted = [*prompt["view"], prompt["question"]]
        started = time.monotonic()
        first: list[float] = []

        def on_text(_: str, started: float = started, first: list[float] = first) -> bool:
            if not first:
                first.append(time.monotonic() - started)
            return False

        history, sent = chats.get(step.chat, (None, []))
        if history is None or wanted[: len(sent)] != sent:  # the prompt's start changed: a new chat state
            history, sent = genai.ChatHistory(), []
        replays = 0
        for index in range(len(sent), len(prompt["view"])):  # photos reach GenAI with the last user message only
            role, _, seeds = prompt["view"][index]
            if role == "user" and seeds:
                generate(history, prompt["view"][: index + 1], seeds, 1, None)
                replays += 1
        result = generate(
            history, wanted, prompt["question"][2], TOKENS, genai.TextStreamer(pipeline.get_tokenizer(), on_text)
        )
        chats[step.chat] = (history, wanted)
        results["turns"][step.name] = {
            "ttft": round(first[0] if first else float("nan"), 2),
            "replays": replays,
            "input_tokens": int(result.perf_metrics.get_num_input_tokens()),
        }
    return results


# --- running and reporting --------------------------------------------------------------------------------------


def _percentile(values: list[float], percent: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1] if len(values) > 1 else values[0]


def _follow_ups(turns: dict[str, Any]) -> list[str]:
    return [name for name in turns if (name[0], int(name[1:])) not in PHOTO_TURNS]


def _summary(turns: dict[str, Any]) -> dict[str, float]:
    """``slowest``: of the follow-ups up to the last full turn, the first ones after the restart aside (they have
    a goal of their own); the last turn is asked while another chat's photo is read."""
    names = _follow_ups(turns)
    times = [turns[name]["ttft"] for name in names]
    last = max(int(name[1:]) for name in turns)
    ordinary = [turns[name]["ttft"] for name in names if int(name[1:]) not in (RESTART_AFTER + 1, last)]
    return {
        "follow_ups": len(times),
        "median": round(statistics.median(times), 2),
        "p95": round(_percentile(times, 95), 2),
        "max": max(times),
        "slowest": max(ordinary),
        "after_photo_alone": turns[f"A{ALONE_TURN}"]["ttft"],
        "after_restart": max(turns[f"{chat}{RESTART_AFTER + 1}"]["ttft"] for chat in "AB"),
    }


def _run(arguments: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"variant failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=40, help="turns each chat takes")
    parser.add_argument("--typing", type=float, default=5.0, help="seconds before each question")
    parser.add_argument("--history-tokens", type=int, help="HISTORY_TOKENS (default: the bot's, derived)")
    parser.add_argument("--model", type=Path, help="a converted model directory (default: the full synthetic INT4)")
    parser.add_argument("--name", default="long_conversation", help="results file name")
    parser.add_argument(
        "--no-step-ahead", action="store_true", help="read a step's view only once it is taken (the earlier way)"
    )
    parser.add_argument("--variant", choices=("engine", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = args.model or full_int4_model()  # built and converted once, before timing anything
    if args.variant == "engine":
        engine = _engine(model, args.turns, args.typing, args.history_tokens, not args.no_step_ahead)
        print(json.dumps(asyncio.run(engine)))
        return
    if args.variant == "raw":
        print(json.dumps(_raw(model, json.loads(args.prompts.read_text()), args.typing)))
        return
    common = ["--turns", str(args.turns), "--typing", str(args.typing), "--model", str(model)]
    if args.history_tokens:
        common += ["--history-tokens", str(args.history_tokens)]
    if args.no_step_ahead:
        common += ["--no-step-ahead"]
    print("running the engine ...", flush=True)
    engine = _run(["--variant", "engine", *common])
    prompts = Path(f"/tmp/{args.name}-prompts.json")
    prompts.write_text(json.dumps(engine.pop("prompts")))
    print("running raw GenAI with the same prompts ...", flush=True)
    raw = _run(["--variant", "raw", "--prompts", str(prompts), *common])
    print(f"\nhistory budget {engine['history_tokens']} tokens; typing pause {args.typing} s; {TOKENS}-token answers")
    print(f"{'turn':<6}{'prompt':>8}{'engine':>9}{'waited':>8}{'raw':>8}{'raw replays':>13}")
    for name, cell in engine["turns"].items():
        other = raw["turns"][name]
        mark = " photo" if (name[0], int(name[1:])) in PHOTO_TURNS else ""
        mark = {
            f"A{ALONE_TURN}": " (15 s after a photo sent alone)",
            f"B{RESTART_AFTER + 1}": " (after the restart, while A is read again)",
            f"A{RESTART_AFTER + 1}": " (after the restart, A read again)",
            f"A{max(int(n[1:]) for n in engine['turns'])}": " (while another chat's photo is read)",
        }.get(name, mark)
        print(
            f"{name:<6}{cell['input_tokens']:>8}{cell['ttft']:>9.2f}{cell['waited']:>8.2f}"
            f"{other['ttft']:>8.2f}{other['replays']:>13}{mark}"
        )
    summaries = {"engine": _summary(engine["turns"]), "raw": _summary(raw["turns"])}
    goals = {"median": 1.5, "p95": 3.0, "slowest": 3.0, "after_photo_alone": 2.0, "after_restart": 3.0}
    print(f"\n{'':<34}{'engine':>9}{'raw':>9}{'goal':>8}")
    for key, label in (
        ("median", "follow-ups, median"),
        ("p95", "follow-ups, 95th percentile"),
        ("max", "follow-ups, slowest of all"),
        ("slowest", f"slowest to turn {args.turns}, restart aside"),
        ("after_photo_alone", "15 s after a photo sent alone"),
        ("after_restart", "first follow-ups after the restart"),
    ):
        goal = f"{goals[key]:>8.1f}" if key in goals else ""
        print(f"{label:<34}{summaries['engine'][key]:>9.2f}{summaries['raw'][key]:>9.2f}{goal}")
    last = f"A{max(int(n[1:]) for n in engine['turns'])}"
    behind_photos = {last: "another chat's photo", f"A{ALONE_TURN}": "its own photo sent alone"}
    behind_photos[f"B{RESTART_AFTER + 1}"] = "A's conversation read again"  # A's photos take most of that time
    text = max(cell["waited"] for name, cell in engine["turns"].items() if name not in behind_photos)
    photos = "; ".join(
        f"{name} {engine['turns'][name]['waited']:.2f} s ({what})" for name, what in behind_photos.items()
    )
    print(f"waited behind work read ahead: in text pieces at most {text:.2f} s; where a photo was being read: {photos}")
    print(f"restart: engine {engine['restart']}, raw {raw['restart']}")
    settings = {
        "turns": args.turns,
        "typing": args.typing,
        "tokens": TOKENS,
        "step_ahead": not args.no_step_ahead,
        "cpu": bot_cpu_tuning().properties(),
    }
    path = write_results(args.name, {**settings, "summary": summaries, "engine": engine, "raw": raw})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
