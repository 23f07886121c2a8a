"""The fair queue: one request per conversation, first come first served, bounded, observable positions."""

from __future__ import annotations

import asyncio

import pytest

from engine.fair_queue import AlreadyQueued, FairQueue, QueueFull, TicketCancelled


async def test_fifo_across_conversations_and_positions() -> None:
    queue: FairQueue[str, None] = FairQueue(max_waiting=10)
    tickets = [queue.enqueue(key, None) for key in "abcd"]
    assert [queue.position(key) for key in "abcd"] == [0, 1, 2, 3]
    assert [ticket.key for ticket in queue.in_line()] == list("abcd")
    order: list[str] = []

    async def serve(ticket: object, key: str) -> None:
        async with ticket:  # type: ignore[attr-defined]
            order.append(key)
            await asyncio.sleep(0)

    await asyncio.gather(*(serve(t, k) for t, k in zip(reversed(tickets), "dcba", strict=True)))
    assert order == list("abcd")
    assert len(queue) == 0 and queue.running == 0 and queue.served == 4


async def test_one_request_per_conversation_and_a_bounded_line() -> None:
    queue: FairQueue[str, None] = FairQueue(max_waiting=2)
    first = queue.enqueue("a", None)
    with pytest.raises(AlreadyQueued):
        queue.enqueue("a", None)
    queue.enqueue("b", None)
    queue.enqueue("c", None)
    with pytest.raises(QueueFull):
        queue.enqueue("d", None)  # "a" runs, "b" and "c" wait: the running one does not count
    async with first:
        pass
    assert queue.position("a") is None
    queue.enqueue("d", None)
    with pytest.raises(QueueFull):
        queue.enqueue("a", None)  # allowed again once finished, but now the line is full again


async def test_positions_update_as_the_line_moves() -> None:
    queue: FairQueue[str, None] = FairQueue()
    first = queue.enqueue("a", None)
    second = queue.enqueue("b", None)
    third = queue.enqueue("c", None)
    seen: list[int] = []

    async def follow() -> None:
        async for position in third.changes():
            if not seen or position != seen[-1]:
                seen.append(position)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0)
    async with first:
        pass
    await asyncio.sleep(0)
    async with second:
        pass
    await asyncio.wait_for(follower, 1)
    assert seen == [2, 1, 0]


async def test_a_newcomer_behind_is_a_change_for_those_waiting_ahead() -> None:
    queue: FairQueue[str, None] = FairQueue(batch_max=4)
    queue.enqueue("a", None)
    second = queue.enqueue("b", None)
    changes = second.changes()
    assert await anext(changes) == 1
    waiting = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0)
    assert not waiting.done(), "nothing changed yet"
    queue.enqueue("c", None)
    assert await asyncio.wait_for(waiting, 1) == 1


async def test_cancelled_waiting_tickets_never_run_and_free_their_place() -> None:
    queue: FairQueue[str, None] = FairQueue()
    running = queue.enqueue("a", None)
    withdrawn = queue.enqueue("b", None)
    abandoned = queue.enqueue("c", None)
    last = queue.enqueue("d", None)
    assert queue.cancel("b") is True
    assert queue.position("d") == 2

    async def wait_then_run() -> None:
        async with abandoned:
            pytest.fail("an abandoned ticket must not run")

    task = asyncio.create_task(wait_then_run())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.position("d") == 1
    with pytest.raises(TicketCancelled):
        async with withdrawn:
            pass
    async with running:
        pass
    assert queue.position("d") == 0
    async with last:
        pass
    assert len(queue) == 0


async def test_an_exception_in_the_holder_releases_the_slot() -> None:
    queue: FairQueue[str, None] = FairQueue()
    failing = queue.enqueue("a", None)
    after = queue.enqueue("b", None)
    with pytest.raises(RuntimeError):
        async with failing:
            raise RuntimeError("generation failed")
    assert queue.position("b") == 0
    async with after:
        pass


async def test_a_lone_request_runs_alone_and_waiting_ones_run_together_as_a_batch() -> None:
    queue: FairQueue[str, None] = FairQueue(batch_max=3)
    a = queue.enqueue("a", None)
    assert a.state == "running" and not a.batched, "the model was idle: no batch"
    b, c = queue.enqueue("b", None), queue.enqueue("c", None)
    assert [b.position, c.position] == [1, 2], "nobody joins a request running alone"
    queue.release(a)
    assert [b.position, c.position] == [0, 0] and b.batched and c.batched
    d, e = queue.enqueue("d", None), queue.enqueue("e", None)
    assert d.position == 0 and d.batched, "a newcomer joins the running batch"
    assert e.position == 1, "up to batch_max at once"
    queue.release(b)
    assert e.position == 0 and e.batched
    for ticket in (c, d, e):
        queue.release(ticket)
    f = queue.enqueue("f", None)
    assert f.position == 0 and not f.batched, "the batch drained: alone again"


async def test_without_batching_one_runs_at_a_time() -> None:
    queue: FairQueue[str, None] = FairQueue(batch_max=1)
    a, b, c = queue.enqueue("a", None), queue.enqueue("b", None), queue.enqueue("c", None)
    queue.release(a)
    assert [b.position, c.position] == [0, 1] and not b.batched


async def test_held_waits_for_the_running_requests_and_lets_nobody_in_meanwhile() -> None:
    queue: FairQueue[str, None] = FairQueue(batch_max=2)
    a = queue.enqueue("a", None)
    entered = asyncio.Event()

    async def switch() -> None:
        async with queue.held():
            assert queue.running == 0
            entered.set()
            await asyncio.sleep(0.01)

    switching = asyncio.create_task(switch())
    await asyncio.sleep(0.01)
    b = queue.enqueue("b", None)
    assert not entered.is_set() and b.position == 1
    queue.release(a)
    await asyncio.sleep(0)
    assert entered.is_set() and b.position == 1, "still held while the model is switched"
    await switching
    assert b.position == 0, "let in once the switch is done"


async def test_fifty_chats_three_turns_each_stay_in_order_and_fair() -> None:
    queue: FairQueue[int, None] = FairQueue(max_waiting=100)
    grants: list[int] = []
    waits: list[int] = []

    async def chat(key: int) -> None:
        for turn in range(3):
            ticket = queue.enqueue(key, None)
            granted_before = len(grants)
            async with ticket:
                waits.append(len(grants) - granted_before)
                grants.append(key * 10 + turn)
                await asyncio.sleep(0)

    await asyncio.gather(*(chat(key) for key in range(50)))
    assert len(grants) == 150
    for key in range(50):
        assert [g % 10 for g in grants if g // 10 == key] == [0, 1, 2]
    assert max(waits) <= 50, "nobody waits more than one round of the others"
    assert len(queue) == 0 and queue.running == 0


async def test_one_person_asking_in_several_conversations_holds_one_place_at_a_time() -> None:
    """Someone who asks in three groups at once goes behind everyone else's first question with the second and
    third, and people who come later do not starve them: they queue behind in the same round."""
    queue: FairQueue[str, None] = FairQueue(max_waiting=20)
    running = queue.enqueue("busy", None, owner="x")  # takes the model
    for group in ("g1", "g2", "g3"):
        queue.enqueue(f"spread-{group}", None, owner="spreader")
    queue.enqueue("alice", None, owner="alice")
    queue.enqueue("bob", None, owner="bob")
    order = [ticket.key for ticket in queue.in_line()]
    assert order == ["busy", "spread-g1", "alice", "bob", "spread-g2", "spread-g3"]
    async with running:
        pass
    first = queue.in_line()[0]
    assert first.key == "spread-g1"
    async with first:
        queue.enqueue("carol", None, owner="carol")  # round 0 is still being served: carol before the second
    assert [ticket.key for ticket in queue.in_line()] == ["alice", "bob", "carol", "spread-g2", "spread-g3"]
    for _ in range(3):
        async with queue.in_line()[0]:
            pass
    queue.enqueue("dave", None, owner="dave")  # round 1 is being served now: dave waits behind it
    assert [ticket.key for ticket in queue.in_line()] == ["spread-g2", "dave", "spread-g3"]


async def test_two_people_taking_turns_do_not_keep_a_third_persons_second_question_waiting() -> None:
    """B and C ask again each time they are answered; A's second question still gets its turn."""
    queue: FairQueue[str, None] = FairQueue(max_waiting=20)
    queue.enqueue("a1", None, owner="a")
    queue.enqueue("a2", None, owner="a")
    queue.enqueue("b", None, owner="b")
    queue.enqueue("c", None, owner="c")
    served: list[str] = []
    for _ in range(6):
        ticket = queue.in_line()[0]
        async with ticket:
            served.append(str(ticket.key))
        if ticket.owner in ("b", "c"):
            queue.enqueue(str(ticket.owner), None, owner=ticket.owner)  # asks again at once
    assert "a2" in served[:4], served
