"""Voice messages and audio files made on the spot for the tests, good and hostile, with what the reader must do.

Good files are made as phones make them (Opus in Ogg as Telegram's voice messages, MP3, AAC in M4A, FLAC, WAV)
with FFmpeg's encoders through PyAV; the hostile ones are those files damaged, or shaped by hand to claim what
they are not.  ``expect`` as in devkit/media_files.py.
"""

from __future__ import annotations

import functools
import io
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from devkit.media_files import Expect, clip, damaged, flat_jpeg

# (codec, container, sample rate): what Telegram's clients and people's recorders send
FORMATS = {
    "voice": ("libopus", "ogg", 48000),
    "mp3": ("libmp3lame", "mp3", 44100),
    "m4a": ("aac", "ipod", 44100),
    "flac": ("flac", "flac", 44100),
    "wav": ("pcm_s16le", "wav", 16000),
    "pcm-mkv": ("pcm_s16le", "matroska", 8000),
}


@dataclass(frozen=True)
class SoundCase:
    kind: str
    data: bytes
    expect: Expect


def speech_like(seconds: float, rate: int = 16000, loudness: float = 0.4) -> np.ndarray:
    """Something with a voice's shape: a tone gliding in pitch, in syllable-long bursts (float32, mono)."""
    time_points = np.arange(int(rate * seconds)) / rate
    pitch = 180 + 60 * np.sin(2 * np.pi * 0.5 * time_points)
    bursts = np.clip(np.sin(2 * np.pi * 4 * time_points), 0, None)
    return (loudness * np.sin(2 * np.pi * np.cumsum(pitch) / rate) * bursts).astype(np.float32)


def encoded(samples: np.ndarray, form: str = "voice", *, rate: int | None = None) -> bytes:
    """``samples`` (float32 mono at ``rate``, the format's own by default) in the format ``form`` of FORMATS."""
    codec, container, own_rate = FORMATS[form]
    rate = rate or own_rate
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=rate, layout="mono")
        size = stream.codec_context.frame_size or 1024
        for start in range(0, samples.size, size):
            chunk = samples[start : start + size]
            if chunk.size < size and stream.codec_context.frame_size:
                chunk = np.pad(chunk, (0, size - chunk.size))
            pcm = (np.clip(chunk, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            muxer.mux(stream.encode(frame))
        muxer.mux(stream.encode())
    return out.getvalue()


def voice(seconds: float = 3.0, form: str = "voice") -> bytes:
    rate = FORMATS[form][2]
    return encoded(speech_like(seconds, rate), form)


def wav_claiming(seconds_claimed: float, seconds_held: float = 1.0, rate: int = 16000) -> bytes:
    """A 16-bit mono WAV whose header says ``seconds_claimed`` and which holds ``seconds_held`` of sound."""
    held = (speech_like(seconds_held, rate) * 32767).astype("<i2").tobytes()
    claimed = min(int(seconds_claimed * rate) * 2, 0xFFFFFFFF - 36)
    header = b"RIFF" + struct.pack("<I", 36 + claimed) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + b"data" + struct.pack("<I", claimed) + held


@functools.cache
def long_wav(minutes: float, rate: int = 8000) -> bytes:
    """``minutes`` of 8-bit sound, small enough for Telegram's 20 MB at 40 minutes."""
    samples = speech_like(minutes * 60, rate)
    held = ((samples + 1) * 127.5).astype(np.uint8).tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(held)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate, 1, 8)
    return header + b"data" + struct.pack("<I", len(held)) + held


def matroska_understating(seconds_held: float, seconds_claimed: float = 1.0) -> bytes:
    """Sound in Matroska whose Duration element says ``seconds_claimed`` while it holds ``seconds_held``: the
    decoding, not the header, has to find it too long."""
    data = bytearray(encoded(speech_like(seconds_held, FORMATS["pcm-mkv"][2]), "pcm-mkv"))
    position = data.find(b"\x44\x89\x88")  # Segment Info's Duration: an 8-byte float, in milliseconds
    if position < 0:
        raise ValueError("the muxer wrote no Duration element")
    data[position + 3 : position + 11] = struct.pack(">d", seconds_claimed * 1000)
    return bytes(data)


def hostile_sounds(count: int, seed: int = 5) -> Iterator[SoundCase]:
    """The fixed hostile cases first, then ``count`` randomly truncated or bit-flipped voice messages and files."""
    yield SoundCase("empty file", b"", "rejected")
    yield SoundCase("text", b"this is not a recording\n" * 50, "rejected")
    yield SoundCase("a JPEG", flat_jpeg(64, 64), "rejected")
    yield SoundCase("a clip without sound", clip(frames=4), "rejected")
    yield SoundCase("silence", encoded(np.zeros(48000 * 3, np.float32), "voice"), "rejected")
    noise = np.random.default_rng(seed).normal(0, 0.2, 48000 * 3).astype(np.float32)
    yield SoundCase("noise", encoded(noise), "ok")
    # FFmpeg measures a WAV by its size, not by what its header claims: a one-second recording, heard as one.
    yield SoundCase("WAV header claims ten hours", wav_claiming(36000), "ok")
    yield SoundCase("40 minutes", long_wav(40), "rejected")
    yield SoundCase("says 1 s, holds 10 minutes", matroska_understating(600), "rejected")
    rng = random.Random(seed)
    sources = [voice(2.0), voice(2.0, "mp3"), voice(2.0, "m4a")]
    for index in range(count):
        yield SoundCase("damaged", damaged(rng, sources[index % len(sources)]), "either")
