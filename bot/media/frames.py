"""Videos, animations, video notes and video stickers as a few evenly spaced frames for the model.

Why frames: Phi-3.5-vision has no video input; it was trained to answer about several images at once, and
OpenVINO GenAI takes a list of images for it, so a clip becomes one question about its frames, in order.
Why evenly spaced: a frame from the middle of each equal part of the clip covers it without knowing where
the action is; a very short clip gets fewer frames (``FRAMES_PER_SECOND``), one that shows a single picture
one.  Why PyAV: FFmpeg's decoders (H.264, HEVC, VP9, AV1, GIF, ...) in a wheel that brings its own codecs.

What a file claims is checked before its pictures are decoded: the frame size against the image limit, the
duration (measured from the packets when the header does not say) against ``max_seconds``.  What it holds is
checked as it is decoded, because a header can lie (a Matroska file announcing 64×64 frames may carry
16000×16000 ones): FFmpeg is told the largest frame it may allocate, and every decoded frame's size is checked
again before it is used.  Decoding seeks to each frame it needs and stops, keeping the frames found so far,
once it has decoded ``DECODE_LIMIT`` frames or ``DECODE_PIXELS`` pixels: an absurd frame count, a file whose
timestamps lie, or a GIF whose every one-pixel frame is a full 6000×6000 canvas costs a bounded amount of
work.  A frame taken is converted straight to the size the model reads, never at its full size.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av

from bot.media.decoding import ImageLimits
from bot.media.ffmpeg import first_stream, header_seconds, opened
from bot.media.refusal import Refusal

FRAMES_PER_SECOND = 2.0  # at most this many frames per second of clip: a 1 s GIF gets 2, not 8
DECODE_LIMIT = 2000  # frames decoded in all for one clip, whatever its file says
DECODE_PIXELS = DECODE_LIMIT * 1920 * 1080  # pixels decoded in all: as many as DECODE_LIMIT 1080p frames
DECODE_THREADS = 2  # FFmpeg's threads per clip: each one's stack and buffers count against the reader's memory
JPEG_QUALITY = 90


class VideoError(Refusal):
    """Why a clip cannot be read."""


@dataclass(frozen=True)
class Frames:
    """The frames taken from one clip."""

    seconds: tuple[float, ...]  # when each frame is shown in the clip
    duration: float  # of the clip, in seconds
    images: tuple[bytes, ...]  # JPEG, one per entry of ``seconds``


def frame_count(duration: float, limit: int) -> int:
    return max(1, min(limit, math.ceil(duration * FRAMES_PER_SECOND)))


def sample(data: bytes, *, limit: int, max_seconds: float, long_side: int) -> Frames:
    """Up to ``limit`` frames spread evenly over the clip in ``data``, each at most ``long_side`` pixels on its
    long side (the engine would scale it to that anyway); raises VideoError for what cannot be read."""
    max_pixels = ImageLimits().max_pixels
    unreadable = functools.partial(VideoError, "clip_unreadable")
    with opened(data, unreadable) as container:
        stream = first_stream(container.streams.video, functools.partial(VideoError, "no_pictures"), unreadable)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise VideoError("frames_too_large", width=width, height=height)
        stream.codec_context.thread_count = DECODE_THREADS
        stream.codec_context.options = {"max_pixels": str(max_pixels)}  # larger frames: a decoding error
        duration = _duration(container, stream)
        if duration > max_seconds:
            raise VideoError("too_long", duration=duration, max_seconds=max_seconds)
        start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        count = frame_count(duration, limit)
        targets = [start + duration * (index + 0.5) / count for index in range(count)]
        taken = _frames_at(container, stream, targets, _Budget(max_pixels), long_side)
        if not taken:
            raise VideoError("no_frames")
    seconds = tuple(round(max(0.0, (shown if shown is not None else start) - start), 2) for shown, _ in taken)
    return Frames(seconds, duration, tuple(image for _, image in taken))


def _duration(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    """Seconds, from the stream's header, the container's, or else the packets' timestamps."""
    announced = header_seconds(container, stream)
    if announced is not None:
        return announced
    end = 0.0
    for packets, packet in enumerate(container.demux(stream), 1):
        if packet.pts is not None and packet.time_base:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        if packets > DECODE_LIMIT * 4:
            break
    container.seek(0)
    return end


_Taken = tuple[float | None, bytes]  # when a frame is shown (None: the file does not say), and its JPEG


@dataclass
class _Budget:
    """What is left to decode of one clip, and the largest frame that may be decoded."""

    max_pixels: int
    frames: int = DECODE_LIMIT
    pixels: int = DECODE_PIXELS

    def spend(self, frame: av.VideoFrame) -> bool:
        """Whether ``frame`` may be used; False once the budget is spent.  A frame larger than its header said
        is refused: FFmpeg's own check may not cover every decoder."""
        pixels = frame.width * frame.height
        if pixels > self.max_pixels:
            raise VideoError("frames_too_large", width=frame.width, height=frame.height)
        if self.frames <= 0 or pixels > self.pixels:
            return False
        self.frames -= 1
        self.pixels -= pixels
        return True


def _frames_at(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    targets: list[float],
    budget: _Budget,
    long_side: int,
) -> list[_Taken]:
    """For each target time, the first frame shown at or after it (or the clip's last, if it ends before),
    converted as soon as it is found; seeks to the key frame before each target when the file allows it, else
    decodes from the start once."""
    taken: list[_Taken] = []
    try:
        last_pts: int | None = None
        for target in targets:
            container.seek(int(target / float(stream.time_base or Fraction(1, av.time_base))), stream=stream)
            frame = _first_from(_decoded(container, stream, budget), target)
            if frame is None:
                break
            if not taken or frame.pts != last_pts:  # a clip shorter than its header says ends early
                taken.append(_taken(frame, long_side))
                last_pts = frame.pts
        return taken
    except av.FFmpegError as error:  # not seekable (some GIFs, raw streams): one pass from the start
        if isinstance(error, MemoryError):
            raise
        container.seek(0)
    taken = []
    decoded = _decoded(container, stream, budget)
    previous: av.VideoFrame | None = None
    for target in targets:
        frame = _first_from(decoded, target, last=previous)
        if frame is None or frame is previous:
            break
        taken.append(_taken(frame, long_side))
        previous = frame
    return taken


def _decoded(
    container: av.container.InputContainer, stream: av.VideoStream, budget: _Budget
) -> Iterator[av.VideoFrame]:
    for frame in container.decode(stream):
        if not budget.spend(frame):
            return
        yield frame


def _first_from(
    frames: Iterator[av.VideoFrame], target: float, last: av.VideoFrame | None = None
) -> av.VideoFrame | None:
    for frame in frames:
        last = frame
        if frame.time is None or frame.time >= target:
            return frame
    return last


def _taken(frame: av.VideoFrame, long_side: int) -> _Taken:
    """The frame as a JPEG at most ``long_side`` pixels on its long side, scaled by FFmpeg from its decoded
    form: a full-size RGB copy of a 40-megapixel frame would take 120 MB."""
    scale = min(1.0, long_side / max(frame.width, frame.height))
    width, height = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    image = frame.to_image(width=width, height=height, interpolation="LANCZOS")
    if frame.rotation:
        image = image.rotate(frame.rotation, expand=True)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return frame.time, out.getvalue()
