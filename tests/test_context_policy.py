"""The context policy on made-up conversations: a stable prefix, steps of half the budget planned a lead ahead,
the pinned photo."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from engine.context_policy import (
    LEAD,
    Window,
    default_history_tokens,
    exchanges,
    fit,
    in_view,
    kv_cache_tokens,
    planned_step,
)

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


def test_each_step_goes_where_it_was_planned_before_it() -> None:
    chat = Chat(budget=2000)
    plans: set[Window] = set()  # every plan made before a turn
    for number in range(120):
        plan = planned_step(chat.messages, chat.window, chat.budget)
        if plan is not None:
            plans.add(plan)
        window = chat.window
        texts = [group for group in exchanges(in_view(chat.messages, window)) if not group[0].has_images]
        longest = max((sum(m.tokens for m in group) for group in texts), default=0)
        # exchanges of different sizes, some far larger than others, and a photo now and then
        chat.turn(question=30 + (number * 37) % 90, answer=40 + (number * 53) % 150, photo=number % 23 == 0)
        if chat.window != window and chat.window not in plans:
            # only a photo, or a text exchange longer than any in view, passes the mark and the budget at once
            assert number % 23 == 0 or chat.messages[-2].tokens + chat.messages[-1].tokens > longest
    assert chat.steps >= 8


def test_a_plan_keeps_half_the_budget_less_its_lead_and_never_moves_as_the_lead_fills() -> None:
    chat = Chat(budget=3000)
    while planned_step(chat.messages, chat.window, chat.budget) is None:
        chat.turn()
    plan = planned_step(chat.messages, chat.window, chat.budget)
    assert plan is not None and plan != chat.window
    kept = sum(m.tokens for m in in_view(chat.messages, plan))
    assert chat.view_tokens() > 3000 - 3000 // LEAD, "planned once within an eighth of the budget"
    assert kept <= 3000 // 2 - 3000 // LEAD, "half the budget less the lead is read ahead"
    photo = True
    while chat.steps == 0:
        assert planned_step(chat.messages, chat.window, chat.budget) == plan
        chat.turn(question=10 if photo else 30, photo=photo)  # a photo while the lead fills changes no plan
        photo = False
    assert chat.window == plan


def test_a_long_answer_makes_the_lead_longer_so_the_next_one_is_planned_for() -> None:
    messages = [Msg(1, "user", 50), Msg(2, "assistant", 500)]  # a long answer: more than an eighth of the budget
    messages += [Msg(i, "user" if i % 2 else "assistant", 100) for i in range(3, 17)]  # 1950 tokens in all
    assert fit(messages, Window(), budget=2400) == Window()
    plan = planned_step(messages, Window(), budget=2400)
    assert plan is not None and plan.start is not None, "1950 of 2400 tokens: within the longest exchange's lead"
    later = [*messages, Msg(17, "user", 50), Msg(18, "assistant", 500)]  # as long again: 2500 of 2400
    assert fit(later, Window(), budget=2400) == plan, "the step it takes was planned, and read ahead, before it"
    assert sum(m.tokens for m in in_view(later, plan)) <= 2400 // 2, "about half the budget after the step"


def test_an_exchange_larger_than_any_before_past_the_budget_at_once_steps_down_to_half_of_it() -> None:
    messages = [Msg(i, "user" if i % 2 else "assistant", 100) for i in range(1, 11)]  # 5 exchanges, 1000 tokens
    assert planned_step(messages, Window(), budget=1200) is None, "1000 of 1200: not within an exchange or 1/8"
    latest = [*messages, Msg(11, "user", 200), Msg(12, "assistant", 200)]  # 1400 of 1200, at once
    window = fit(latest, Window(), budget=1200)
    assert window == Window(start=9), "half the budget kept: the latest exchange and the one before it"
    assert sum(m.tokens for m in in_view(latest, window)) == 600


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
    assert fit(messages, Window(), budget=1300, system_tokens=400) == Window(start=3)


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
