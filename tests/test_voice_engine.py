"""The engine hears: with the store's speech model loaded beside the vision model, a question asked aloud is written
down in the model's process in its turn (fair queue, alone or between a batch's steps) and answered as the same
question typed; without one, it fails with a reason and the vision model keeps answering."""

from __future__ import annotations

import asyncio

from devkit.sound_files import speech_like
from engine.conversation import Turn
from engine.engine import Chunk, Engine, Event, Heard, Started, Waiting
from engine.pipeline_process import load_pipeline
from engine.pipeline_protocol import Speech
from model_store.loader import ModelChoice, pipeline_spec
from model_store.store import ModelEntry, ModelStore
from tests.conftest import Converted
from tests.test_engine import SETTINGS, finished, photo

VOICE = Speech(speech_like(3.0).astype("<f4").tobytes())


def _engine(vision: ModelEntry, speech: ModelEntry | None, batch_max: int = 1) -> Engine:
    return Engine(load_pipeline(pipeline_spec(vision, kv_cache_gb=1, speech=speech)), SETTINGS, batch_max=batch_max)


async def _asked(engine: Engine, key: str, past: list[Turn], question: Turn, speech: Speech | None) -> list[Event]:
    return [event async for event in engine.ask(key, past, question, speech=speech)]


async def test_a_question_asked_aloud_is_heard_then_answered_as_the_same_question_typed(
    int4_store: tuple[ModelStore, ModelEntry], speech_conversion: Converted
) -> None:
    engine = _engine(int4_store[1], speech_conversion.entry)
    assert engine.hears
    picture = photo((30, 120, 200))
    spoken = await _asked(engine, "voice", [], Turn("user", "", (picture,)), VOICE)
    kinds = [type(event) for event in spoken]
    assert kinds.index(Started) < kinds.index(Heard) < kinds.index(Chunk), kinds
    [heard] = [event for event in spoken if isinstance(event, Heard)]
    assert heard.text and "<|" not in heard.text and heard.seconds > 0
    answer = finished(spoken)
    assert answer.status == "complete" and answer.report.generated_tokens == SETTINGS.max_new_tokens

    assert heard.question == heard.text
    typed = finished(await _asked(engine, "typed", [], Turn("user", heard.text, (picture,)), None))
    assert (typed.text, typed.report.input_tokens) == (answer.text, answer.report.input_tokens)

    past = [Turn("user", heard.question, (picture,)), Turn("assistant", answer.text)]
    follow_up = finished(await _asked(engine, "voice", past, Turn("user", "And the colours?"), None))
    assert follow_up.report.replays == 0, "the history's question is the one the model read: its cache holds"

    captioned = await _asked(engine, "caption", [], Turn("user", "Please answer briefly.", (picture,)), VOICE)
    [heard_again] = [event for event in captioned if isinstance(event, Heard)]
    assert heard_again.question == f"Please answer briefly.\n{heard_again.text}"
    typed_both = finished(await _asked(engine, "both", [], Turn("user", heard_again.question, (picture,)), None))
    assert (finished(captioned).text, finished(captioned).report.input_tokens) == (
        typed_both.text,
        typed_both.report.input_tokens,
    )
    assert typed_both.report.input_tokens > typed.report.input_tokens, "the caption is part of the question"
    await engine.aclose()


async def test_a_voice_question_joins_a_running_batch_between_its_steps(
    int4_store: tuple[ModelStore, ModelEntry], speech_conversion: Converted
) -> None:
    engine = _engine(int4_store[1], speech_conversion.entry, batch_max=3)
    first = _asked(engine, "a", [], Turn("user", "Describe this.", (photo((40, 40, 40)),)), None)
    typed = _asked(engine, "b", [], Turn("user", "Say something nice."), None)
    spoken = _asked(engine, "c", [], Turn("user", ""), VOICE)
    _, b, c = await asyncio.gather(first, typed, spoken)
    assert any(isinstance(event, Waiting) for event in c), "the voice question waited for the lone answer"
    assert finished(b).status == finished(c).status == "complete"
    [heard] = [event for event in c if isinstance(event, Heard)]
    alone = finished(await _asked(engine, "c-alone", [], Turn("user", heard.question), None))
    assert finished(c).text == alone.text, "heard in a batch, answered as the same question typed alone"
    await engine.aclose()


async def test_without_a_speech_model_a_voice_question_fails_with_its_reason_and_typing_still_works(
    int4_store: tuple[ModelStore, ModelEntry],
) -> None:
    engine = _engine(int4_store[1], None)
    assert not engine.hears
    failed = finished(await _asked(engine, "voice", [], Turn("user", ""), VOICE))
    assert failed.status == "failed" and failed.error == "no speech model is loaded"
    assert finished(await _asked(engine, "typed", [], Turn("user", "Hello?"), None)).status == "complete"
    await engine.aclose()


def test_the_store_s_speech_model_goes_with_the_vision_model_it_serves(
    int4_store: tuple[ModelStore, ModelEntry], speech_conversion: Converted
) -> None:
    store, vision = int4_store
    choice = ModelChoice(store.root, vision.source, vision.precision)
    assert choice.spec().speech is None  # a store without one
    assert ModelChoice(speech_conversion.store.root, vision.source, "int4").spec(vision).speech == (
        speech_conversion.entry
    )
