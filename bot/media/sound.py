"""Voice messages and audio files as the speech model hears them: 16 kHz mono samples, read in the file reader.

Why PyAV: FFmpeg's decoders (Opus in Telegram's OGG voice messages, MP3, AAC, FLAC, WAV, ...) and its resampler
in the wheel that already reads clips.  What a file claims is checked first (its duration, from the stream's or
the container's header, against ``max_seconds``); what it holds is checked as it is decoded, because a header
can lie: decoding stops, and the file is refused, once it has given more than ``max_seconds`` of sound or read
``MAX_PACKETS`` packets, so a file claiming seconds and holding hours costs at most ``max_seconds`` of decoding.
A sound that is nowhere louder than ``SILENCE_RMS`` is refused as silence: Whisper writes invented words for it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import av
import numpy as np

from bot.media.ffmpeg import first_stream, header_seconds, opened
from bot.media.refusal import Refusal
from engine.pipeline_protocol import SPEECH_SAMPLE_RATE as SAMPLE_RATE

MAX_PACKETS = 200_000  # an Opus packet is 20 ms: over an hour of voice, whatever the header says
MIN_SECONDS = 0.1
GRACE_SECONDS = 1.0  # encoders pad and headers round: a recording of exactly the limit says a little more
SILENCE_RMS = 1e-3  # about -60 dBFS in every 30 ms window: nothing a microphone would call speech
WINDOW = int(0.03 * SAMPLE_RATE)


class SoundError(Refusal):
    """Why a voice message or an audio file cannot be heard."""


@dataclass(frozen=True)
class Sound:
    """What the speech model hears: float32 samples (little-endian bytes, so it pickles small), mono, 16 kHz."""

    samples: bytes
    seconds: float

    def array(self) -> np.ndarray:
        return np.frombuffer(self.samples, dtype="<f4")


def listen(data: bytes, *, max_seconds: float) -> Sound:
    """The sound in ``data`` at 16 kHz mono; raises SoundError for what cannot be heard or is too long."""
    unreadable = functools.partial(SoundError, "sound_unreadable")
    with opened(data, unreadable) as container:
        stream = first_stream(container.streams.audio, functools.partial(SoundError, "no_sound"), unreadable)
        announced = header_seconds(container, stream)
        if announced is not None and announced > max_seconds + GRACE_SECONDS:
            raise SoundError("sound_too_long", duration=announced, max_seconds=max_seconds)
        samples = _decoded(container, stream, int(max_seconds * SAMPLE_RATE), max_seconds)
    if samples.size < MIN_SECONDS * SAMPLE_RATE:
        raise SoundError("no_sound")
    if _loudest_window(samples) < SILENCE_RMS:
        raise SoundError("silent")
    return Sound(samples.astype("<f4").tobytes(), round(samples.size / SAMPLE_RATE, 2))


def _decoded(
    container: av.container.InputContainer, stream: av.AudioStream, limit: int, max_seconds: float
) -> np.ndarray:
    """Every sample, resampled as they come; refused past ``limit`` samples or MAX_PACKETS packets."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    parts: list[np.ndarray] = []
    count = 0
    for packets, packet in enumerate(container.demux(stream), 1):
        if packets > MAX_PACKETS:
            raise SoundError("sound_too_long", duration=count / SAMPLE_RATE, max_seconds=max_seconds)
        for frame in packet.decode():
            for resampled in resampler.resample(frame):
                part = resampled.to_ndarray().reshape(-1)
                parts.append(part)
                count += part.size
        if count > limit + GRACE_SECONDS * SAMPLE_RATE:
            raise SoundError("sound_too_long", duration=count / SAMPLE_RATE, max_seconds=max_seconds)
    for resampled in resampler.resample(None):
        parts.append(resampled.to_ndarray().reshape(-1))
    return np.concatenate(parts)[:limit] if parts else np.zeros(0, np.float32)


def _loudest_window(samples: np.ndarray) -> float:
    """The root mean square of the loudest 30 ms of ``samples``."""
    windows = samples[: samples.size // WINDOW * WINDOW].reshape(-1, WINDOW)  # MIN_SECONDS holds many windows
    return float(np.sqrt((windows.astype(np.float64) ** 2).mean(axis=1)).max())
