"""The context policy on made-up conversations: a stable prefix, steps of half the budget, the pinned photo."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from engine.context_policy import Window, default_history_tokens, exchanges, fit, in_view, kv_cache_tokens

PHI35_VISION = {
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_size": 3072,
    "max_position_embeddings": 131072,
}


@dataclass(frozen=True)
class Msg:
    id: int
    role: str
    tokens: int
    has_images: bool = False


class Chat:
    """A conversation that asks the policy after every answer, as the bot does."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.messages: list[Msg] = []
        self.window = Window()
        self.steps = 0

    def say(self, role: str, tokens: int, photo: bool = False) -> None:
        self.messages.append(Msg(len(self.messages) + 1, role, tokens, photo))

    def turn(self, question: int = 30, answer: int = 40, photo: bool = False) -> list[int]:
        """One exchange; returns the ids the model saw before the question."""
        seen = [m.id for m in in_view(self.messages, self.window)]
        self.say("user", question + (800 if photo else 0), photo)
        self.say("assistant", answer)
        window = fit(self.messages, self.window, self.budget)
        self.steps += window != self.window
        self.window = window
        return seen

    def view_tokens(self) -> int:
        return sum(m.tokens for m in in_view(self.messages, self.window))


def test_a_view_within_the_budget_never_changes_its_start() -> None:
    chat = Chat(budget=10_000)
    for _ in range(20):
        chat.turn()
    assert chat.window == Window() and chat.steps == 0


def test_a_step_drops_the_oldest_exchanges_down_to_half_the_budget() -> None:
    chat = Chat(budget=1000)
    views = [chat.turn() for _ in range(60)]
    assert chat.steps >= 3
    assert chat.view_tokens() <= 1000
    for before, after in itertools.pairwise(views):
        stepped = not after or not before or after[0] != before[0]
        if not stepped:  # between steps the view only grows at its end: the prompt's prefix stays
            assert after[: len(before)] == before
    starts = {view[0] for view in views if view}
    assert len(starts) == chat.steps + 1, "the start moves only at steps"
    assert all(chat.messages[start - 1].role == "user" for start in starts), "a view starts with a question"


def test_the_latest_exchange_is_never_dropped_even_when_alone_it_is_over_budget() -> None:
    chat = Chat(budget=100)
    chat.turn()
    chat.turn(question=500, answer=500)
    assert [m.id for m in in_view(chat.messages, chat.window)] == [3, 4]


def test_the_photo_stays_pinned_after_its_exchange_is_dropped() -> None:
    chat = Chat(budget=2000)
    chat.turn(photo=True)
    for _ in range(29):
        chat.turn()
    assert chat.steps >= 1
    view = in_view(chat.messages, chat.window)
    assert view[0].id == 1 and view[0].has_images, "the turn-1 photo is still the first thing the model sees"
    assert view[1].id == 2, "with its answer"
    assert view[2].id > 3, "the text turns after it were dropped"


def test_a_newer_photo_replaces_the_pin_at_the_next_step_and_older_photos_leave() -> None:
    chat = Chat(budget=2500)
    chat.turn(photo=True)  # photo 1: ids 1, 2
    while chat.steps == 0:
        chat.turn()
    assert chat.window.pin == 1
    steps = chat.steps
    chat.turn(photo=True)  # photo 2 joins the view; between steps the pin stays, so the prefix stays
    photo_two = chat.messages[-2].id
    assert chat.steps == steps
    assert [m.id for m in in_view(chat.messages, chat.window) if m.has_images] == [1, photo_two]
    while chat.steps == steps:
        chat.turn()
    images = [m.id for m in in_view(chat.messages, chat.window) if m.has_images]
    assert images == [photo_two], "at the next step only the latest photo stays; the first left with its turn"


def test_a_photo_sent_alone_and_its_question_are_one_exchange() -> None:
    messages = [Msg(1, "user", 800, True), Msg(2, "user", 20), Msg(3, "assistant", 40), Msg(4, "user", 10)]
    assert [[m.id for m in group] for group in exchanges(messages)] == [[1, 2, 3], [4]]


def test_the_system_prompt_counts_against_the_budget() -> None:
    messages = [Msg(1, "user", 300), Msg(2, "assistant", 300), Msg(3, "user", 300), Msg(4, "assistant", 300)]
    assert fit(messages, Window(), budget=1300) == Window()
    assert fit(messages, Window(), budget=1300, system_tokens=200) == Window(start=3)


def test_the_default_budget_shares_the_kv_cache_among_a_full_batch() -> None:
    # Phi-3.5-vision: 32 layers x 32 heads x 96 values, keys and values, one byte each on the CPU.
    per_token = 2 * 32 * 32 * 96
    on_cpu = kv_cache_tokens(PHI35_VISION, kv_cache_gb=4, device="CPU")
    assert on_cpu == 4 * 2**30 // per_token
    assert kv_cache_tokens(PHI35_VISION, kv_cache_gb=4, device="GPU") == on_cpu // 2
    assert kv_cache_tokens(PHI35_VISION, kv_cache_gb=0, device="CPU") == on_cpu, "a growing cache counts as 4 GB"

    def budget(kv_tokens: int, batch_size: int) -> int:
        return default_history_tokens(PHI35_VISION, kv_tokens=kv_tokens, batch_size=batch_size, max_new_tokens=512)

    assert budget(on_cpu, 4) == on_cpu // 4 - 512
    assert budget(on_cpu, 1) == on_cpu - 512
    assert budget(64 * on_cpu, 1) == 131072 - 512, "never more than the model's context"
