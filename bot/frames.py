"""Videos, animations, video notes and video stickers as a few evenly spaced frames for the model.

Why frames: Phi-3.5-vision has no video input; it was trained to answer about several images at once, and
OpenVINO GenAI takes a list of images for it, so a clip becomes one question about its frames, in order.
Why evenly spaced: a frame from the middle of each equal part of the clip covers it without knowing where
the action is; a very short clip gets fewer frames (``FRAMES_PER_SECOND``), one that shows a single picture
one.  Why PyAV: FFmpeg's decoders (H.264, HEVC, VP9, AV1, GIF, ...) in a wheel that brings its own codecs.

What a file claims is checked before its pictures are decoded: the frame size against the image limit, the
duration (measured from the packets when the header does not say) against ``max_seconds``; decoding seeks to
each frame it needs and gives up after ``DECODE_LIMIT`` frames, so an absurd frame count or a file whose
timestamps lie costs a bounded amount of work.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
from PIL import Image

from engine.images import ImageLimits

FRAMES_PER_SECOND = 2.0  # at most this many frames per second of clip: a 1 s GIF gets 2, not 8
DECODE_LIMIT = 2000  # frames decoded in all for one clip, whatever its file says
JPEG_QUALITY = 90
UNREADABLE = "I couldn't read that clip; it seems damaged or in a format I don't know."


class VideoError(Exception):
    """A friendly reason why a clip cannot be read, for the person who sent it."""


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
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoError("That file has no pictures in it, so there is nothing for me to look at.")
            stream = container.streams.video[0]
            if stream.codec_context is None:  # a codec FFmpeg does not have, or a header too damaged to say
                raise VideoError(UNREADABLE)
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > ImageLimits().max_pixels:
                raise VideoError(f"That clip's frames are {width}×{height} pixels, too large for me to read.")
            duration = _duration(container, stream)
            if duration > max_seconds:
                raise VideoError(
                    f"That clip is {clock(duration)} long; I can look at clips of up to {clock(max_seconds)}."
                )
            start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
            count = frame_count(duration, limit)
            targets = [start + duration * (index + 0.5) / count for index in range(count)]
            frames = _frames_at(container, stream, targets)
            if not frames:
                raise VideoError("I couldn't find a single picture in that clip.")
            images = tuple(_jpeg(frame, long_side) for frame in frames)
    except av.FFmpegError as error:
        raise VideoError(UNREADABLE) from error
    seconds = tuple(round(max(0.0, float(frame.time or start) - start), 2) for frame in frames)
    return Frames(seconds, duration, images)


def clock(seconds: float, *, tenths: bool = False) -> str:
    """0:07, 1:30, 1:02:03, or 2.5 s for a clip under ten seconds (``tenths``)."""
    if tenths and seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _duration(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    """Seconds, from the stream's header, the container's, or else the packets' timestamps."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    end = 0.0
    for packets, packet in enumerate(container.demux(stream), 1):
        if packet.pts is not None and packet.time_base:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        if packets > DECODE_LIMIT * 4:
            break
    container.seek(0)
    return end


def _frames_at(
    container: av.container.InputContainer, stream: av.VideoStream, targets: list[float]
) -> list[av.VideoFrame]:
    """For each target time, the first frame shown at or after it (or the clip's last, if it ends before);
    seeks to the key frame before each target when the file allows it, else decodes from the start once."""
    frames: list[av.VideoFrame] = []
    budget = [DECODE_LIMIT]
    try:
        for target in targets:
            container.seek(int(target / float(stream.time_base or Fraction(1, av.time_base))), stream=stream)
            frame = _first_from(_decoded(container, stream, budget), target)
            if frame is None:
                break
            if not frames or frame.pts != frames[-1].pts:  # a clip shorter than its header says ends early
                frames.append(frame)
        return frames
    except av.FFmpegError:  # not seekable (some GIFs, raw streams): one pass from the start
        container.seek(0)
    frames = []
    decoded = _decoded(container, stream, budget)
    for target in targets:
        frame = _first_from(decoded, target, last=frames[-1] if frames else None)
        if frame is None or (frames and frame is frames[-1]):
            break
        frames.append(frame)
    return frames


def _decoded(
    container: av.container.InputContainer, stream: av.VideoStream, budget: list[int]
) -> Iterator[av.VideoFrame]:
    for frame in container.decode(stream):
        if budget[0] <= 0:
            return
        budget[0] -= 1
        yield frame


def _first_from(
    frames: Iterator[av.VideoFrame], target: float, last: av.VideoFrame | None = None
) -> av.VideoFrame | None:
    for frame in frames:
        last = frame
        if frame.time is None or frame.time >= target:
            return frame
    return last


def _jpeg(frame: av.VideoFrame, long_side: int) -> bytes:
    image = frame.to_image()
    if frame.rotation:
        image = image.rotate(frame.rotation, expand=True)
    image.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
