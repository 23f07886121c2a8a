"""Voice messages and audio files become what the speech model hears (bot/media/sound.py), in the file reader's child
process like every file from outside: 16 kHz mono from the formats people send, and for a hostile corpus (damaged,
empty, silent, too long by its header or only by what it holds) a kind refusal, quickly."""

from __future__ import annotations

import numpy as np
import pytest

from bot.media.reader import MediaError, MediaReader
from bot.media.sound import SAMPLE_RATE, SoundError, listen
from devkit.sound_files import FORMATS, SoundCase, encoded, hostile_sounds, long_wav, matroska_understating, voice
from tests.support.outcomes import check_outcomes
from tests.support.saying import said


@pytest.mark.parametrize("form", list(FORMATS))
def test_the_formats_people_send_become_16_khz_mono_of_the_same_length(form: str) -> None:
    sound = listen(voice(3.0, form), max_seconds=60)
    samples = sound.array()
    assert abs(sound.seconds - 3.0) < 0.1 and abs(samples.size / SAMPLE_RATE - sound.seconds) <= 0.01
    assert samples.dtype == np.float32 and 0.2 < np.abs(samples).max() <= 1.0


async def test_the_reader_hears_a_voice_message_in_its_child_and_refuses_silence_there() -> None:
    reader = MediaReader()
    sound = await reader.sound(voice(2.0), max_seconds=60)
    assert abs(sound.seconds - 2.0) < 0.1
    with pytest.raises(MediaError) as caught:
        await reader.sound(encoded(np.zeros(48000 * 2, np.float32)), max_seconds=60)
    assert said(caught.value) == "That recording is silent, so there is no question in it for me to hear."


def test_too_long_is_refused_from_the_header_and_from_what_a_lying_file_holds() -> None:
    with pytest.raises(SoundError) as announced:
        listen(long_wav(40), max_seconds=300)
    assert said(announced.value) == "That recording is 40:00 long; I can listen to up to 5:00."
    with pytest.raises(SoundError) as held:
        listen(matroska_understating(120, seconds_claimed=1.0), max_seconds=30)
    assert held.value.reason == "sound_too_long" and 30 < held.value.data["duration"] <= 32
    exactly = listen(voice(30.0), max_seconds=30)  # Opus pads its last frame: the header says a little more
    assert 29.9 <= exactly.seconds <= 30.0


def outcome(case: SoundCase) -> str:
    try:
        sound = listen(case.data, max_seconds=300)
    except SoundError as refusal:
        message = said(refusal)
        assert message.endswith(".") and len(message) < 200, message
        assert "avcodec" not in message and "Errno" not in message, message
        return "rejected"
    assert 0 < sound.seconds <= 300 and abs(sound.array().size / SAMPLE_RATE - sound.seconds) <= 0.01, case.kind
    return "ok"


def test_hostile_recordings_are_heard_or_kindly_refused_quickly() -> None:
    seen = check_outcomes(hostile_sounds(60), outcome)
    assert seen["damaged ok"] and seen["damaged rejected"], seen
