"""A deterministic corpus of the files people (and attackers) send as photos.

Every case says what the intake must do with it: ``ok`` (a usable picture), ``rejected`` (a friendly
refusal) or ``either`` (randomly damaged files that a decoder may or may not still read; the rule for those
is only: a picture or a refusal, nothing else, and quickly).
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from PIL import Image

Expect = Literal["ok", "rejected", "either"]
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
OVER_TELEGRAM_LIMIT = 20 * 1024 * 1024 + 1


@dataclass(frozen=True)
class Case:
    kind: str
    name: str  # the file name it would arrive under
    data: bytes
    expect: Expect


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _picture(rng: random.Random, mode: str = "RGB", max_side: int = 96) -> Image.Image:
    width, height = rng.randint(1, max_side), rng.randint(1, max_side)
    image = Image.effect_noise((width, height), rng.uniform(10, 120)).convert("RGB")
    return image.convert(mode) if mode != "RGB" else image


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size its (tiny) data does not have: the decompression-bomb shape."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    data = _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + header + data + _png_chunk(b"IEND", b"")


def _real_bomb() -> bytes:
    """A genuine PNG of 20000 x 20000 black pixels that compresses to a few hundred kilobytes."""
    width = height = 20_000
    row = b"\x00" + b"\x00" * width  # filter byte + one grey byte per pixel
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


@functools.cache
def png_40_megapixels_rgba(width: int = 8000, height: int = 5000) -> bytes:
    """A 164 KB PNG of 40 megapixels with transparency, just within the image limit: decoding it takes most of a
    gigabyte and a second or more, which in the bot's own process stalled every chat."""
    row = b"\x00" + bytes([30, 120, 200, 128]) * width
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _valid(rng: random.Random) -> Case:
    fmt = rng.choice(FORMATS)
    modes = {"JPEG": ("RGB", "L", "CMYK"), "WEBP": ("RGB", "RGBA"), "GIF": ("P", "L"), "BMP": ("RGB", "L", "1")}
    mode = rng.choice(modes.get(fmt, ("RGB", "RGBA", "LA", "L", "P", "I;16", "1")))
    if fmt == "TIFF":
        mode = rng.choice(("RGB", "RGBA", "CMYK", "I;16", "F", "L"))
    image = _picture(rng, mode)
    options: dict[str, object] = {"quality": rng.randint(5, 95)} if fmt in ("JPEG", "WEBP") else {}
    return Case(f"valid {fmt} {mode}", f"photo.{fmt.lower()}", _encode(image, fmt, **options), "ok")


def _alpha(rng: random.Random) -> Case:
    image = _picture(rng, "RGBA")
    image.putalpha(rng.randint(0, 255))
    if rng.random() < 0.5:
        palette = image.convert("P", palette=Image.Palette.ADAPTIVE)
        palette.info["transparency"] = 0
        return Case("palette with transparency", "sticker.png", _encode(palette, "PNG", transparency=0), "ok")
    return Case("alpha", "screenshot.png", _encode(image, rng.choice(("PNG", "WEBP"))), "ok")


def _exif_rotated(rng: random.Random) -> Case:
    image = _picture(rng)
    exif = Image.Exif()
    exif[0x0112] = rng.randint(1, 8)
    return Case("EXIF-rotated", "IMG_0001.jpg", _encode(image, "JPEG", exif=exif.tobytes()), "ok")


def _animated(rng: random.Random) -> Case:
    size = (rng.randint(2, 64), rng.randint(2, 64))
    frames = [Image.new("RGB", size, (rng.randrange(256), 0, 0)) for _ in range(rng.randint(2, 6))]
    fmt = rng.choice(("GIF", "WEBP"))
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return Case(f"animated {fmt}", f"funny.{fmt.lower()}", data, "ok")


def _sixteen_bit(rng: random.Random) -> Case:
    image = Image.new("I;16", (rng.randint(1, 64), rng.randint(1, 64)))
    image.putdata([rng.randrange(65536) for _ in range(image.width * image.height)])
    return Case("16-bit", "scan.png", _encode(image, "PNG"), "ok")


def _truncated(rng: random.Random) -> Case:
    fmt = rng.choice(("JPEG", "PNG", "WEBP"))
    data = _encode(_picture(rng, max_side=200), fmt)
    cut = rng.randint(1, max(1, len(data) // 2))
    return Case(f"truncated {fmt}", f"photo.{fmt.lower()}", data[:cut], "rejected")


def _truncated_anywhere(rng: random.Random) -> Case:
    fmt = rng.choice(FORMATS)
    data = _encode(_picture(rng, max_side=200), fmt)
    return Case(f"cut short {fmt}", f"photo.{fmt.lower()}", data[: rng.randint(1, len(data) - 1)], "either")


def _bit_flipped(rng: random.Random) -> Case:
    fmt = rng.choice(FORMATS)
    data = bytearray(_encode(_picture(rng, max_side=128), fmt))
    for _ in range(rng.randint(1, 40)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return Case(f"corrupt {fmt}", f"photo.{fmt.lower()}", bytes(data), "either")


def _header_lies(rng: random.Random) -> Case:
    side = rng.choice((20_000, 65_535, 100_000, 2**31 - 1))
    return Case("huge header", "bomb.png", _png_header_only(side, rng.choice((side, 20_000))), "rejected")


def _one_pixel(rng: random.Random) -> Case:
    fmt = rng.choice(FORMATS)
    return Case(f"1x1 {fmt}", f"dot.{fmt.lower()}", _encode(Image.new("RGB", (1, 1), (9, 9, 9)), fmt), "ok")


def _not_an_image(rng: random.Random) -> Case:
    payloads = (
        b"PK\x03\x04" + rng.randbytes(200),  # a zip
        b"%PDF-1.7\n" + rng.randbytes(200),
        b"<html><script>alert(1)</script></html>",
        b"\x7fELF" + rng.randbytes(100),
        rng.randbytes(rng.randint(1, 5000)),
        b"\xff\xd8\xff",  # a JPEG that stops after its magic number
        b"GIF89a",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    )
    return Case("not an image", "photo.jpg", rng.choice(payloads), "rejected")


def _empty(_: random.Random) -> Case:
    return Case("zero bytes", "photo.jpg", b"", "rejected")


GENERATORS: tuple[Callable[[random.Random], Case], ...] = (
    _valid,
    _alpha,
    _exif_rotated,
    _animated,
    _sixteen_bit,
    _truncated,
    _truncated_anywhere,
    _bit_flipped,
    _header_lies,
    _one_pixel,
    _not_an_image,
    _empty,
)


def special_cases() -> list[Case]:
    """The expensive ones, once each."""
    return [
        Case("decompression bomb", "bomb.png", _real_bomb(), "rejected"),
        Case("40 megapixels with transparency", "huge.png", png_40_megapixels_rgba(), "ok"),
        Case("over 20 MB", "huge.jpg", b"\xff\xd8\xff\xe0" + bytes(OVER_TELEGRAM_LIMIT), "rejected"),
    ]


def hostile_images(count: int, seed: int = 2026) -> Iterator[Case]:
    """``count`` cases cycling through every kind, then the special ones."""
    rng = random.Random(seed)
    for index in range(count):
        yield GENERATORS[index % len(GENERATORS)](rng)
    yield from special_cases()
