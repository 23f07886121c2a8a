"""Image intake: every kind of picture people send becomes upright 8-bit RGB, or a friendly refusal."""

from __future__ import annotations

import io
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from bot import texts
from bot.media.decoding import ImageRejected, prepare_image
from engine.images import crop_grid, for_genai


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def marked(width: int = 60, height: int = 40) -> Image.Image:
    """Grey picture with a red block in the top-left corner, to see where 'up' ends up."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, 10, 10))
    return image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_common_formats(fmt: str) -> None:
    prepared = prepare_image(encode(marked(), fmt))
    assert prepared.pixels.shape == (40, 60, 3)
    assert prepared.pixels.dtype == np.uint8 and prepared.pixels.flags["C_CONTIGUOUS"]
    assert prepared.pixels[2, 2, 0] > 200 and prepared.pixels[2, 2, 1] < 60
    assert prepared.original_format == fmt


@pytest.mark.parametrize(("orientation", "corner"), [(6, (0, -1)), (8, (-1, 0)), (3, (-1, -1))])
def test_exif_orientation_is_applied(orientation: int, corner: tuple[int, int]) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    prepared = prepare_image(encode(marked(), "JPEG", exif=exif))
    rotated = orientation in (6, 8)
    assert (prepared.width, prepared.height) == ((40, 60) if rotated else (60, 40))
    row = 2 if corner[0] == 0 else prepared.height - 3
    column = 2 if corner[1] == 0 else prepared.width - 3
    assert prepared.pixels[row, column, 0] > 200, "the red corner moved where the camera meant it"


def test_transparency_becomes_white() -> None:
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 5, 5))
    prepared = prepare_image(encode(rgba, "PNG"))
    assert tuple(prepared.pixels[15, 15]) == (255, 255, 255)
    assert tuple(prepared.pixels[1, 1]) == (0, 0, 255)
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 5, 5))
    prepared = prepare_image(encode(palette, "PNG", transparency=0))
    assert tuple(prepared.pixels[15, 15]) == (255, 255, 255)
    assert tuple(prepared.pixels[1, 1]) == (255, 0, 0)
    la = Image.new("LA", (10, 10), (0, 0))
    assert tuple(prepare_image(encode(la, "PNG")).pixels[5, 5]) == (255, 255, 255)


def test_cmyk_16_bit_float_and_1_bit() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    pixel = prepare_image(encode(cmyk, "JPEG")).pixels[8, 8]
    assert pixel[0] > 200 and pixel[1] < 60
    gradient = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (8, 1))
    sixteen_bit = Image.fromarray(gradient)
    assert sixteen_bit.mode.startswith("I;16")
    sixteen = prepare_image(encode(sixteen_bit, "PNG")).pixels[:, :, 0]
    assert sixteen.min() < 5 and sixteen.max() > 250, "16-bit range is scaled, not clipped"
    floats = Image.fromarray(np.tile(np.linspace(-1.0, 1.0, 64, dtype=np.float32), (8, 1)))
    assert prepare_image(encode(floats, "TIFF")).pixels[:, :, 0].max() > 250
    one_bit = Image.new("1", (16, 16), 1)
    assert prepare_image(encode(one_bit, "PNG")).pixels.mean() > 250


def test_animations_use_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    for fmt in ("GIF", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        pixel = prepare_image(data).pixels[8, 8]
        assert pixel[0] > 200 and pixel[1] < 60, fmt


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files_are_refused_kindly(fmt: str) -> None:
    data = encode(Image.effect_noise((200, 200), 60).convert("RGB"), fmt)
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data[: len(data) // 2])
    assert caught.value.reason in ("truncated", "not_an_image")
    said = texts.refusal(caught.value.reason, caught.value.data)
    assert "again" in said or "image" in said


def test_not_images_empty_and_oversized() -> None:
    for data in (b"PK\x03\x04 this is a zip file named photo.jpg", bytes(range(256)) * 10, b"%PDF-1.7\n"):
        with pytest.raises(ImageRejected) as caught:
            prepare_image(data)
        assert caught.value.reason == "not_an_image"
        assert "JPEG" in texts.refusal(caught.value.reason, caught.value.data)
    with pytest.raises(ImageRejected) as caught:
        prepare_image(b"")
    assert caught.value.reason == "empty"
    with pytest.raises(ImageRejected) as caught:
        prepare_image(bytes(20 * 1024 * 1024 + 1))
    assert caught.value.reason == "too_large_bytes"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: a bomb must be refused from its header, before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_refused_fast() -> None:
    started = time.monotonic()
    for width, height in ((20000, 20000), (100000, 100000)):
        with pytest.raises(ImageRejected) as caught:
            prepare_image(_png_header_only(width, height))
        assert caught.value.reason in ("too_many_pixels", "bomb"), "refused from the header"
    assert time.monotonic() - started < 1.0


def test_tiny_and_huge_images_are_resized_keeping_aspect() -> None:
    tiny = prepare_image(encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"))
    assert min(tiny.width, tiny.height) >= 8
    wide = prepare_image(encode(Image.new("RGB", (8000, 100), (1, 2, 3)), "PNG"))
    assert wide.width == 2688 and abs(wide.height - 34) <= 1
    big_jpeg = prepare_image(encode(Image.new("RGB", (6000, 4000), (200, 10, 10)), "JPEG"))
    assert max(big_jpeg.width, big_jpeg.height) <= 2688
    assert (big_jpeg.original_width, big_jpeg.original_height) == (6000, 4000)
    sliver = prepare_image(encode(Image.new("RGB", (1, 2000), (5, 5, 5)), "PNG"))  # found by the hostile corpus
    assert (sliver.width, sliver.height) == (8, 2688)


def test_the_same_bytes_are_the_same_image() -> None:
    data = encode(marked(), "PNG")
    assert prepare_image(data).sha256 == prepare_image(data).sha256 != prepare_image(encode(marked(), "JPEG")).sha256


@pytest.mark.parametrize(
    ("width", "height", "num_crops", "grid"),
    [
        (640, 480, 4, (2, 2)),
        (640, 480, 16, (3, 4)),
        (480, 640, 16, (4, 3)),
        (1080, 2340, 4, (2, 1)),  # a phone screenshot
        (2000, 600, 4, (1, 3)),  # a panorama
        (336, 336, 1, (1, 1)),
    ],
)
def test_crop_grid_follows_phi3_visions_hd_transform(width: int, height: int, num_crops: int, grid: tuple) -> None:
    assert crop_grid(width, height, num_crops) == grid


def test_genais_single_precision_gives_a_rare_size_another_grid() -> None:
    assert crop_grid(1344, 1009, 16) == (4, 4)
    assert crop_grid(1344, 1009, 16, single_precision=True) == (3, 4)  # GenAI's HD image: 1008 pixels high, not 1009
    assert for_genai(np.zeros((1009, 1344, 3), np.uint8), 16).shape == (1344, 1344, 3)  # so GenAI's grid is square
    assert crop_grid(640, 480, 16, single_precision=True) == crop_grid(640, 480, 16) == (3, 4)


def test_images_with_a_non_square_crop_grid_are_padded_white_to_a_square() -> None:
    screenshot = prepare_image(encode(marked(540, 1170), "PNG"))
    padded = for_genai(screenshot.pixels, 4)
    assert padded.shape == (1170, 1170, 3)
    assert crop_grid(1170, 1170, 4) == (2, 2)
    left = (1170 - 540) // 2
    assert np.array_equal(padded[:, left : left + 540], screenshot.pixels)  # the picture itself, untouched
    assert (padded[:, :left] == 255).all() and (padded[:, left + 540 :] == 255).all()
    photo = prepare_image(encode(marked(640, 480), "PNG"))
    assert for_genai(photo.pixels, 4) is photo.pixels  # a square grid goes as it is
    assert for_genai(photo.pixels, 16).shape == (640, 640, 3)
