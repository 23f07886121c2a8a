"""The register of answers in progress: one claim per conversation, a group's members waiting their turn, stops
by the asker or an admin, and a group upgrade that re-points the new chat id to the answer still running under
the old one."""

from __future__ import annotations

import asyncio

from bot.admission.answers_in_progress import WAITING_PER_CONVERSATION, AnswerInProgress, AnswersInProgress, Cancel
from bot.history import ConversationKey

GROUP, SUPERGROUP = ConversationKey(-42), ConversationKey(-10042)


def never(key: ConversationKey, *, grace: float | None = None) -> bool:
    return True


def recording(stopped: list[ConversationKey]) -> Cancel:
    """An engine's cancel that notes which conversation it was told to stop."""

    def cancel(key: ConversationKey, *, grace: float | None = None) -> bool:
        stopped.append(key)
        return True

    return cancel


async def test_one_claim_per_conversation_until_the_answer_ends() -> None:
    answers, stopped = AnswersInProgress(), []
    async with answers.claim(GROUP, 7, recording(stopped)) as first:
        assert isinstance(first, AnswerInProgress) and answers.busy(GROUP)
        async with answers.claim(GROUP, 8, never) as second:
            assert second == "own", "a second question of a conversation that does not queue is refused"
        assert answers.busy(GROUP), "the refused claim took nothing away"
        async with answers.claim(ConversationKey(-42, 5), 8, never) as topic:
            assert isinstance(topic, AnswerInProgress), "a forum topic is a conversation of its own"
    assert not answers.busy(GROUP) and stopped == []


async def test_group_members_wait_their_turn_and_the_asker_is_told_to_wait_for_their_own() -> None:
    answers = AnswersInProgress()
    places: list[tuple[int, int]] = []
    order: list[int] = []

    async def ask(asker: int, hold: asyncio.Event) -> object:
        async def waiting(place: int) -> None:
            places.append((asker, place))

        async with answers.claim(GROUP, asker, never, waits="behind_others", waiting=waiting) as claimed:
            if isinstance(claimed, AnswerInProgress):
                order.append(asker)
                await hold.wait()
            return claimed

    holds = {asker: asyncio.Event() for asker in (1, 2, 3, 4, 5)}
    first = asyncio.create_task(ask(1, holds[1]))
    await asyncio.sleep(0)
    own = await ask(1, holds[1])
    assert own == "own", "someone whose answer is being written is told so, not queued behind themselves"
    waiters = [asyncio.create_task(ask(asker, holds[asker])) for asker in (2, 3, 4)]
    await asyncio.sleep(0)
    assert places == [(2, 2), (3, 3), (4, 4)], "each is told their place"
    assert await ask(5, holds[5]) == "full", f"at most {WAITING_PER_CONVERSATION} wait for one conversation"
    for asker in (1, 2, 3, 4):
        holds[asker].set()
    await asyncio.gather(first, *waiters)
    assert order == [1, 2, 3, 4], "answered in the order they asked"
    assert not answers.busy(GROUP)


async def test_a_waiting_member_may_withdraw_and_a_cancelled_wait_leaves_no_trace() -> None:
    answers = AnswersInProgress()
    release = asyncio.Event()

    async def hold() -> None:
        async with answers.claim(GROUP, 1, never):
            await release.wait()

    async def wait(asker: int) -> object:
        async with answers.claim(GROUP, asker, never, waits="behind_others") as claimed:
            return claimed

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    withdrawn, cancelled = asyncio.create_task(wait(2)), asyncio.create_task(wait(3))
    await asyncio.sleep(0)
    assert answers.withdraw(GROUP, 2) and not answers.withdraw(GROUP, 9)
    assert await withdrawn == "withdrawn"
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    release.set()
    await holder
    assert not answers.busy(GROUP), "nobody is left holding the conversation"
    async with answers.claim(GROUP, 4, never) as later:
        assert isinstance(later, AnswerInProgress)


async def test_a_kept_photo_waits_for_its_askers_own_answer() -> None:
    answers = AnswersInProgress()
    release = asyncio.Event()

    async def hold() -> None:
        async with answers.claim(GROUP, 1, never):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)

    async def keep() -> object:
        async with answers.claim(GROUP, 1, never, waits="always") as claimed:
            return claimed

    kept = asyncio.create_task(keep())
    await asyncio.sleep(0)
    assert not kept.done(), "it waits rather than being refused"
    release.set()
    await holder
    assert isinstance(await kept, AnswerInProgress)


async def test_only_the_asker_or_an_admin_may_stop_and_only_the_answer_named() -> None:
    answers = AnswersInProgress()
    stopped: list[ConversationKey] = []
    assert answers.may_stop(GROUP, 1, admin=False), "nothing runs: anyone may try"
    async with answers.claim(GROUP, 7, recording(stopped)) as claimed:
        assert isinstance(claimed, AnswerInProgress)
        claimed.answer_id = 11
        assert answers.may_stop(GROUP, 7, admin=False)
        assert not answers.may_stop(GROUP, 8, admin=False)
        assert not answers.may_stop(GROUP, None, admin=False)
        assert answers.may_stop(GROUP, 8, admin=True)
        assert not answers.stop(GROUP, answer_id=10), "an older answer's Stop button stops nothing"
        assert stopped == []
        assert answers.stop(GROUP, answer_id=11) and stopped == [GROUP]
    async with answers.claim(GROUP, None, never):
        assert not answers.may_stop(GROUP, 7, admin=False), "an unknown asker's answer: admins only"


async def test_a_group_upgrade_points_the_new_id_to_the_running_answer() -> None:
    answers, stopped = AnswersInProgress(), []
    async with answers.claim(GROUP, 7, recording(stopped)):
        assert answers.move_chat(GROUP.chat_id, SUPERGROUP.chat_id) == 1
        assert answers.busy(SUPERGROUP) and answers.busy(GROUP)
        assert not answers.may_stop(SUPERGROUP, 8, admin=False) and answers.may_stop(SUPERGROUP, 7, admin=False)
        assert answers.stop(SUPERGROUP)
        assert stopped == [GROUP], "the engine is told the key it runs the answer under"
    assert not answers.busy(SUPERGROUP) and not answers.busy(GROUP), "both ids are free when it ends"
    assert not answers.stop(SUPERGROUP)
    assert answers.move_chat(GROUP.chat_id, SUPERGROUP.chat_id) == 0


async def test_an_upgrade_leaves_an_answer_already_running_under_the_new_id_alone() -> None:
    answers, stopped = AnswersInProgress(), []
    async with answers.claim(GROUP, 7, recording(stopped)) as old:
        async with answers.claim(SUPERGROUP, 8, recording(stopped)):
            answers.move_chat(GROUP.chat_id, SUPERGROUP.chat_id)
            assert isinstance(old, AnswerInProgress)
            old.release()  # the model is done with the old group's answer
            assert not old.held
            assert answers.busy(SUPERGROUP), "the supergroup's own answer still runs"
            assert answers.stop(SUPERGROUP) and stopped == [SUPERGROUP]
        assert not answers.busy(GROUP), "released early, and the claim's end changes nothing"


async def test_a_released_answer_stops_nothing_of_the_next_answer_in_its_conversation() -> None:
    """The bug this record exists against: an answer whose final text fails after the model was done must not
    stop the conversation's next answer, which the engine runs under the same key."""
    answers, stopped = AnswersInProgress(), []
    async with answers.claim(GROUP, 7, recording(stopped)) as first:
        assert isinstance(first, AnswerInProgress)
        first.release()  # the model is done; its final text is on its way to Telegram
        async with answers.claim(GROUP, 7, recording(stopped)) as following:
            assert isinstance(following, AnswerInProgress), "the conversation may ask again at once"
            assert not first.stop(), "a released claim stops nothing"
            assert stopped == [] and not following.stopped
            assert answers.stop(GROUP) and stopped == [GROUP], "a stop by key reaches the answer that holds it"
    assert not answers.busy(GROUP)


async def test_shutdown_stops_every_answer_being_given_through_its_claim_once() -> None:
    answers, stopped, graces = AnswersInProgress(), [], []

    def cancel(key: ConversationKey, *, grace: float | None = None) -> bool:
        stopped.append(key)
        graces.append(grace)
        return True

    async with answers.claim(GROUP, 7, cancel) as moved, answers.claim(ConversationKey(5), 5, cancel) as released:
        assert isinstance(moved, AnswerInProgress) and isinstance(released, AnswerInProgress)
        answers.move_chat(GROUP.chat_id, SUPERGROUP.chat_id)
        released.release()
        assert answers.stop_all(grace=2.0) == 1, "an answer under two ids counts once; a released one not at all"
        assert stopped == [GROUP] and graces == [2.0] and moved.stopped
