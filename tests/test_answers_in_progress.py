"""The register of answers in progress: one claim per conversation, stops by the asker or an admin, and a
group upgrade that re-points the new chat id to the answer still running under the old one."""

from __future__ import annotations

from bot.answers_in_progress import AnswersInProgress
from bot.history import ConversationKey

GROUP, SUPERGROUP = ConversationKey(-42), ConversationKey(-10042)


def test_one_claim_per_conversation_until_the_answer_ends() -> None:
    answers, stopped = AnswersInProgress(), []
    with answers.claim(GROUP, 7, lambda key: stopped.append(key) or True) as first:
        assert first is not None and answers.busy(GROUP)
        with answers.claim(GROUP, 8, lambda key: True) as second:
            assert second is None, "a second question of the conversation is refused"
        assert answers.busy(GROUP), "the refused claim took nothing away"
        with answers.claim(ConversationKey(-42, 5), 8, lambda key: True) as topic:
            assert topic is not None, "a forum topic is a conversation of its own"
    assert not answers.busy(GROUP) and stopped == []


def test_only_the_asker_or_an_admin_may_stop() -> None:
    answers = AnswersInProgress()
    assert answers.may_stop(GROUP, 1, admin=False), "nothing runs: anyone may try"
    with answers.claim(GROUP, 7, lambda key: True):
        assert answers.may_stop(GROUP, 7, admin=False)
        assert not answers.may_stop(GROUP, 8, admin=False)
        assert not answers.may_stop(GROUP, None, admin=False)
        assert answers.may_stop(GROUP, 8, admin=True)
    with answers.claim(GROUP, None, lambda key: True):
        assert not answers.may_stop(GROUP, 7, admin=False), "an unknown asker's answer: admins only"


def test_a_group_upgrade_points_the_new_id_to_the_running_answer() -> None:
    answers, stopped = AnswersInProgress(), []
    with answers.claim(GROUP, 7, lambda key: stopped.append(key) or True):
        assert answers.move_chat(GROUP.chat_id, SUPERGROUP.chat_id) == 1
        assert answers.busy(SUPERGROUP) and answers.busy(GROUP)
        assert not answers.may_stop(SUPERGROUP, 8, admin=False) and answers.may_stop(SUPERGROUP, 7, admin=False)
        assert answers.stop(SUPERGROUP)
        assert stopped == [GROUP], "the engine is told the key it runs the answer under"
    assert not answers.busy(SUPERGROUP) and not answers.busy(GROUP), "both ids are free when it ends"
    assert not answers.stop(SUPERGROUP)
    assert answers.move_chat(GROUP.chat_id, SUPERGROUP.chat_id) == 0


def test_an_upgrade_leaves_an_answer_already_running_under_the_new_id_alone() -> None:
    answers, stopped = AnswersInProgress(), []
    with answers.claim(GROUP, 7, lambda key: stopped.append(key) or True) as old:
        with answers.claim(SUPERGROUP, 8, lambda key: stopped.append(key) or True):
            answers.move_chat(GROUP.chat_id, SUPERGROUP.chat_id)
            assert old is not None
            answers.release(old)  # the model is done with the old group's answer
            assert answers.busy(SUPERGROUP), "the supergroup's own answer still runs"
            assert answers.stop(SUPERGROUP) and stopped == [SUPERGROUP]
        assert not answers.busy(GROUP), "released early, and the claim's end changes nothing"
