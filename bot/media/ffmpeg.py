"""FFmpeg through PyAV, as the file reader opens clips and recordings: a file from bytes whose every FFmpeg error is
the file's refusal, the stream it is read for, and its length as its headers say."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import av

from bot.media.refusal import Refusal

S = TypeVar("S", bound=av.stream.Stream)


@contextmanager
def opened(data: bytes, unreadable: Callable[[], Refusal]) -> Iterator[av.container.InputContainer]:
    """``data`` opened for reading; an FFmpeg error while it is read raises ``unreadable()`` instead, except running
    out of the reader's memory, which stays the reader's own refusal (bot/media/reader.py)."""
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            yield container
    except av.FFmpegError as error:
        if isinstance(error, MemoryError):
            raise
        raise unreadable() from error


def first_stream(streams: Sequence[S], missing: Callable[[], Refusal], unreadable: Callable[[], Refusal]) -> S:
    """The first of a file's streams of one kind (its pictures, its sound); raises ``missing()`` when it has none and
    ``unreadable()`` when FFmpeg has no decoder for it or its header is too damaged to say which."""
    if not streams:
        raise missing()
    stream = streams[0]
    if stream.codec_context is None:
        raise unreadable()
    return stream


def header_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """Seconds, as the stream's header or else the container's says, if either does."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None
