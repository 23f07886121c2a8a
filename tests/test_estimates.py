"""Time estimates from measured speed: the running averages, the prompt-reading line and the wait in line."""

from __future__ import annotations

import pytest

from bot import texts
from engine.estimates import SMOOTHING, Estimate, Sample, Speed, first_text_in_line, together


def sample(
    question_tokens: int = 800,
    image_tokens: int = 757,
    first_text: float = 10.0,
    vision: float = 4.0,
    waited: float = 0.0,
    generated: int = 100,
    tokens_per_second: float | None = 10.0,
    complete: bool = True,
) -> Sample:
    return Sample(question_tokens, image_tokens, first_text, vision, waited, generated, tokens_per_second, complete)


def test_nothing_is_estimated_before_an_answer_was_measured() -> None:
    assert Speed().estimate(800, 757, 512) is None


def test_one_photo_answer_predicts_the_same_photo_question() -> None:
    speed = Speed()
    speed.record(sample())
    estimate = speed.estimate(800, 757, 512)
    assert estimate is not None
    assert estimate.first_text == pytest.approx(10.0)
    assert estimate.whole == pytest.approx(10.0 + 99 / 10.0)


def test_encoding_scales_with_image_tokens_and_reading_with_question_tokens() -> None:
    speed = Speed()
    speed.record(sample())  # 4 s for 757 image tokens, 6 s for 800 question tokens
    estimate = speed.estimate(1600, 1514, 512)  # two such photos
    assert estimate is not None and estimate.first_text == pytest.approx(8.0 + 12.0)


def test_time_waiting_behind_work_read_ahead_is_not_counted_as_reading() -> None:
    speed = Speed()
    speed.record(sample(first_text=13.0, waited=3.0))
    estimate = speed.estimate(800, 757, 512)
    assert estimate is not None and estimate.first_text == pytest.approx(10.0)


def test_running_averages_move_toward_new_measurements() -> None:
    speed = Speed()
    speed.record(sample(tokens_per_second=10.0, generated=100))
    speed.record(sample(tokens_per_second=20.0, generated=200))
    assert speed.decode_tokens_per_second == pytest.approx(10.0 + SMOOTHING * 10.0)
    assert speed.answer_tokens == pytest.approx(100 + SMOOTHING * 100)


def test_a_stopped_answer_says_nothing_about_answer_length() -> None:
    speed = Speed()
    speed.record(sample(generated=100))
    speed.record(sample(generated=3, complete=False))
    assert speed.answer_tokens == pytest.approx(100)


def test_answer_length_is_bounded_by_max_new_tokens() -> None:
    speed = Speed()
    speed.record(sample(generated=400))
    estimate = speed.estimate(800, 757, 101)
    assert estimate is not None and estimate.whole - estimate.first_text == pytest.approx(100 / 10.0)


def test_a_short_follow_up_keeps_its_fixed_cost_once_questions_of_several_sizes_were_measured() -> None:
    speed = Speed()
    speed.record(sample(question_tokens=800, image_tokens=757, first_text=10.0, vision=4.0))  # reading 6 s
    speed.record(sample(question_tokens=20, image_tokens=0, first_text=1.5, vision=0.0))  # reading 1.5 s
    reading = speed.reading_seconds(20)
    assert reading is not None and sum(reading) == pytest.approx(1.5)  # a rate through zero: 20 / 800 * 6 = 0.15 s
    fixed, growing = reading
    assert fixed == pytest.approx(1.5 - growing) and growing == pytest.approx(20 * 4.5 / 780)
    assert sum(speed.reading_seconds(410) or ()) == pytest.approx((1.5 + 6.0) / 2)


def test_a_question_far_from_any_measured_size_gets_no_number() -> None:
    speed = Speed()
    speed.record(sample(question_tokens=800))
    assert speed.estimate(20, 0, 512) is None, "a first text follow-up after photos: its fixed cost is unknown"
    speed.record(sample(question_tokens=20, image_tokens=0, first_text=1.5, vision=0.0))
    assert speed.estimate(20, 0, 512) is not None


def test_a_photo_question_is_not_estimated_before_photos_were_measured() -> None:
    speed = Speed()
    speed.record(sample(image_tokens=0, vision=0.0, question_tokens=20, first_text=1.0))
    assert speed.estimate(800, 757, 512) is None
    assert speed.estimate(20, 0, 512) is not None


def test_the_wait_in_line_adds_answers_ahead_one_after_another() -> None:
    waiting = [Estimate(10.0, 30.0, 9.0), Estimate(5.0, 20.0, 4.0), Estimate(4.0, 9.0, 3.0)]
    assert first_text_in_line([12.0], waiting, 2, 1, None) == pytest.approx(12 + 30 + 20 + 4)
    assert first_text_in_line([], waiting[2:], 0, 1, None) == 4.0


def test_a_batch_reads_its_photos_together_and_its_answers_end_together() -> None:
    # Running batch of two; five waiting in batches of two: the first wave is read together (its work at the
    # measured share, the fixed cost once) and its longest answer written; the request at place 2 is read
    # with the one behind it; the fifth is not its concern.
    photo = Estimate(15.0, 20.0, 14.5)
    waiting = [photo, Estimate(14.0, 24.0, 13.5), photo, Estimate(16.0, 21.0, 15.5), photo]
    waited = first_text_in_line([5.0, 8.0], waiting, 2, 2, 0.8)
    assert waited == pytest.approx(8.0 + (0.5 + 0.8 * 28.0) + 10.0 + (0.5 + 0.8 * 30.0))


def test_text_questions_batched_pay_the_fixed_cost_once() -> None:
    text = Estimate(1.2, 5.0, 0.1)
    assert together([text] * 4, 0.8) == pytest.approx(1.1 + 0.8 * 0.4)


def test_a_wait_behind_a_batch_is_unknown_until_a_batch_was_measured() -> None:
    photo = Estimate(15.0, 20.0, 14.5)
    assert together([photo], None) == 15.0
    assert together([photo, photo], None) is None
    assert first_text_in_line([], [photo, photo], 0, 4, None) is None  # the one behind joins its batch
    assert first_text_in_line([], [photo, photo], 1, 1, None) == pytest.approx(35.0)


def test_the_batch_share_is_learned_from_batched_answers() -> None:
    speed = Speed()
    batch = [Estimate(15.0, 20.0, 14.5)] * 3
    speed.record_batch(31.0, batch)
    assert speed.batch_share == pytest.approx((31 - 0.5) / 43.5)
    speed.record_batch(41.0, batch)
    assert speed.batch_share == pytest.approx((1 - SMOOTHING) * 30.5 / 43.5 + SMOOTHING * 40.5 / 43.5)


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(5.2, "about 5 s"), (12.4, "about 12 s"), (89.0, "about 89 s"), (95.0, "about 2 min"), (600.0, "about 10 min")],
)
def test_estimates_are_said_in_round_figures(seconds: float, said: str) -> None:
    assert texts.about(seconds) == said


def test_statuses_say_what_happens_and_how_long_once_known() -> None:
    assert texts.looking(1, 12.3) == "👀 Looking at your photo… about 12 s"
    assert texts.looking(2, None) == "👀 Looking at your 2 photos…"
    assert texts.looking(0, None) == texts.THINKING
    assert texts.waiting(2, 40.0) == "⏳ You're #2 in line, about 40 s."
    assert texts.waiting(2) == "⏳ You're #2 in line."


def test_a_wait_of_a_few_seconds_is_shown_without_a_number() -> None:
    """A text follow-up takes a second or two; "about 1 s" would tell nothing and be wrong by half."""
    assert texts.looking(0, 1.2) == texts.THINKING
    assert texts.looking(1, 4.9) == "👀 Looking at your photo…"
    assert texts.waiting(1, 3.0) == "⏳ You're #1 in line."
    assert texts.looking(1, 5.0) == "👀 Looking at your photo… about 5 s"
