"""PDFs and clips made on the spot for the tests, good and hostile, with what the intake must do with each.

Good files are made with the same libraries people's phones and PDF tools produce files with (FFmpeg's
encoders through PyAV, Pillow's PDF writer, PDFium); the hostile ones are those files damaged, or shaped by
hand to claim what they are not.  ``expect`` as in devkit/hostile_images.py: ``ok`` (images come
out), ``rejected`` (a friendly refusal), ``either`` (randomly damaged: images or a refusal, quickly).
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np
import pypdfium2 as pdfium
from PIL import Image

Expect = Literal["ok", "rejected", "either"]
COLOURS = ((220, 30, 30), (30, 160, 40), (40, 60, 220), (240, 200, 20), (150, 40, 180), (20, 200, 200))


@dataclass(frozen=True)
class MediaCase:
    kind: str
    media: Literal["pdf", "clip"]
    data: bytes
    expect: Expect


def pdf(pages: int = 3, size: tuple[int, int] = (595, 842)) -> bytes:
    """A PDF whose page N is filled with COLOURS[N-1] (cycling), A4 by default."""
    images = [Image.new("RGB", size, COLOURS[index % len(COLOURS)]) for index in range(pages)]
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=72)
    return out.getvalue()


def _pdf_of(objects: Sequence[bytes], trailer: bytes = b"") -> bytes:
    """A PDF written object by object, with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R " % (len(objects) + 1) + trailer + b">>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


_CATALOG = (b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>")


def encrypted_pdf() -> bytes:
    """A PDF under the standard security handler whose user password is not empty."""
    encrypt = b"<< /Filter /Standard /V 1 /R 2 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> /P -4 >>"
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"
    ids = b"<0123456789abcdef0123456789abcdef>"
    return _pdf_of([*_CATALOG, page, encrypt], b"/Encrypt 4 0 R /ID [" + ids + b" " + ids + b"] ")


def pdf_claiming_pages(count: int) -> bytes:
    """A page tree that says it holds ``count`` pages and holds one."""
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"
    return _pdf_of([_CATALOG[0], b"<< /Type /Pages /Kids [3 0 R] /Count %d >>" % count, page])


def pdf_drawing_one_image(times: int, side: int = 4000) -> bytes:
    """A page that draws one ``side`` x ``side`` image ``times`` times: a few hundred kilobytes that take
    PDFium minutes to render (the image is decoded and scaled again at every draw)."""
    pixels = zlib.compress(b"\x80" * side * side * 3, 9)
    image = (
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB /BitsPerComponent 8 "
        % (
            side,
            side,
        )
        + b"/Filter /FlateDecode /Length %d >>\nstream\n" % len(pixels)
        + pixels
        + b"\nendstream"
    )
    drawing = b"q 200 0 0 200 0 0 cm /Im1 Do Q\n" * times
    content = b"<< /Length %d >>\nstream\n" % len(drawing) + drawing + b"\nendstream"
    resources = b"/Resources << /XObject << /Im1 5 0 R >> >>"
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R " + resources + b" >>"
    return _pdf_of([*_CATALOG, page, content, image])


def pdf_of_size(width: float, height: float, pages: int = 1) -> bytes:
    """Blank pages of any size PDFium accepts (up to 14,400 points, 200 inches, a side)."""
    document = pdfium.PdfDocument.new()
    for _ in range(pages):
        document.new_page(width, height).close()
    out = io.BytesIO()
    document.save(out)
    document.close()
    return out.getvalue()


def clip(
    frames: int = 24,
    fps: int = 8,
    size: tuple[int, int] = (160, 120),
    codec: str = "libx264",
    container: str = "mp4",
    gop: int | None = None,
) -> bytes:
    """A clip whose frame N is a flat grey of level N * 10 (mod 250): frames can be told apart by colour."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        for index in range(frames):
            pixels = np.full((size[1], size[0], 3), index * 10 % 250, np.uint8)
            muxer.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        muxer.mux(stream.encode())
    return out.getvalue()


def gif(frames: int = 6, milliseconds: int = 100, size: tuple[int, int] = (80, 60)) -> bytes:
    images = [Image.new("RGB", size, COLOURS[index % len(COLOURS)]) for index in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=milliseconds, loop=0)
    return out.getvalue()


def damaged(rng: random.Random, data: bytes) -> bytes:
    if rng.random() < 0.5:
        return data[: rng.randint(0, max(1, len(data) - 1))]
    flipped = bytearray(data)
    for _ in range(rng.randint(1, 40)):
        position = rng.randrange(len(flipped))
        flipped[position] ^= 1 << rng.randrange(8)
    return bytes(flipped)


def hostile_media(count: int, seed: int = 3) -> Iterator[MediaCase]:
    """The fixed hostile cases first, then ``count`` randomly truncated or bit-flipped PDFs and clips."""
    yield MediaCase("pdf encrypted", "pdf", encrypted_pdf(), "rejected")
    yield MediaCase("pdf empty file", "pdf", b"", "rejected")
    yield MediaCase("pdf is a JPEG", "pdf", _jpeg(), "rejected")
    yield MediaCase("pdf is text", "pdf", b"%PDF-1.7\nthis is not really a PDF\n" * 20, "rejected")
    yield MediaCase("pdf claims a million pages", "pdf", pdf_claiming_pages(1_000_000), "either")
    yield MediaCase("pdf of 3000 pages", "pdf", pdf_of_size(200, 200, pages=3000), "ok")
    yield MediaCase("pdf page 200 inches square", "pdf", pdf_of_size(14_400, 14_400), "ok")
    yield MediaCase("pdf page 200 inches by 1 point", "pdf", pdf_of_size(14_400, 1), "ok")
    yield MediaCase("clip empty file", "clip", b"", "rejected")
    yield MediaCase("clip is a PDF", "clip", pdf(1), "either")  # FFmpeg may find the JPEG a PDF holds
    yield MediaCase("clip is text", "clip", b"not a video at all\n" * 100, "rejected")
    yield MediaCase("clip frames of 42 megapixels", "clip", clip(frames=1, size=(8192, 5120)), "rejected")
    yield MediaCase(
        "clip of 40000 frames, few key frames", "clip", clip(40_000, 1000, (16, 16), "mpeg4", gop=100_000), "ok"
    )
    yield MediaCase("clip of 3 hours in 3 frames", "clip", hours_long_clip(), "rejected")
    yield MediaCase("clip header says 64x64, frames 16000x16000", "clip", header_lies_matroska(), "rejected")
    yield MediaCase("clip GIF 6000x6000 canvas, 2000 one-pixel frames", "clip", huge_canvas_gif(), "ok")
    rng = random.Random(seed)
    sources: list[tuple[Literal["pdf", "clip"], bytes]] = [
        ("pdf", pdf(2)),
        ("clip", clip()),
        ("clip", clip(codec="libvpx-vp9", container="webm")),
        ("clip", gif()),
    ]
    for index in range(count):
        media, data = sources[index % len(sources)]
        yield MediaCase(f"{media} damaged", media, damaged(rng, data), "either")


def hours_long_clip() -> bytes:
    """Three frames, each shown for an hour: a clip of three hours in a few hundred bytes."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as muxer:
        stream = muxer.add_stream("mpeg4", rate=Fraction(1, 3600))
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for _ in range(3):
            muxer.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")))
        muxer.mux(stream.encode())
    return out.getvalue()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, "JPEG")
    return out.getvalue()


def _segment(marker: int, body: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body


def flat_jpeg(width: int, height: int) -> bytes:
    """A baseline JPEG of mid-grey, written by hand so that any size costs no memory to make: three components
    at full resolution, every block's DC difference 0 and no AC coefficients, each coded by a Huffman table of a
    single one-bit code ("0"), so the entropy-coded data is all zero bytes (a megabyte per 16000×16000/3)."""
    quantisation = _segment(0xDB, b"\x00" + bytes([1] * 64))
    frame = _segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00")
    one_code = bytes([1] + [0] * 15) + b"\x00"  # one code of length 1, for symbol 0
    huffman = _segment(0xC4, b"\x00" + one_code + b"\x10" + one_code)
    scan = _segment(0xDA, b"\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00")
    blocks = -(-width // 8) * -(-height // 8) * 3
    return b"\xff\xd8" + quantisation + frame + huffman + scan + bytes(-(-blocks * 2 // 8)) + b"\xff\xd9"


@functools.cache
def header_lies_matroska(frames: int = 4, side: int = 16000) -> bytes:
    """A Motion-JPEG Matroska file (9 MB) whose header and first frame say 64×64 and whose next frames are
    ``side``×``side``: decoded and converted at full size as they come, they take gigabytes."""
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as muxer:
        stream = muxer.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuvj444p"
        for index in range(frames):
            packet = av.Packet(flat_jpeg(64, 64) if index == 0 else flat_jpeg(side, side))
            packet.stream = stream
            packet.pts = packet.dts = index
            packet.time_base = Fraction(1, 1)
            packet.is_keyframe = True
            muxer.mux(packet)
    return out.getvalue()


@functools.cache
def huge_canvas_gif(side: int = 6000, frames: int = 2000, centiseconds: int = 2) -> bytes:
    """A GIF of 46 KB whose canvas is ``side``×``side`` and whose frames each change one pixel: every frame
    decodes to the whole canvas (36 megapixels), and decoding them all takes tens of CPU-seconds."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop for ever
    for index in range(frames):
        out += b"\x21\xf9\x04\x04" + struct.pack("<H", centiseconds) + b"\x00\x00"  # delay, keep the canvas
        x, y = (index * 37) % side, (index * 91) % side
        out += b"\x2c" + struct.pack("<HHHHB", x, y, 1, 1, 0)
        out += b"\x02\x02" + (b"\x4c\x01" if index % 2 else b"\x44\x01") + b"\x00"  # one pixel, LZW-coded
    return bytes(out + b";")
