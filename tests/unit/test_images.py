"""`mmc_ray.images.to_png`: checked PNG passes through untouched, other formats are re-encoded,
unreadable or oversized images are refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mmc_ray.images import ImageRejected, to_png


def encoded(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color=(200, 30, 90) if mode == "RGB" else 0).save(buf, format=fmt)
    return buf.getvalue()


def test_png_is_returned_byte_for_byte() -> None:
    data = encoded("PNG")
    assert to_png(data) is data


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "RGB"), ("BMP", "RGB"), ("JPEG", "CMYK")])
def test_other_formats_come_back_as_png_with_the_same_pixels_size(fmt: str, mode: str) -> None:
    out = to_png(encoded(fmt, mode=mode))
    with Image.open(io.BytesIO(out)) as im:
        assert im.format == "PNG"
        assert im.size == (40, 30)
        assert im.mode in ("RGB", "RGBA")


def test_pixel_limit_is_checked_on_png_too() -> None:
    with pytest.raises(ImageRejected, match="40x30 pixels, more than 1000"):
        to_png(encoded("PNG"), max_pixels=1000)
    assert to_png(encoded("PNG"), max_pixels=1200)


@pytest.mark.parametrize("data", [b"not an image", encoded("PNG")[:-30], b""])
def test_unreadable_and_truncated_images_are_refused(data: bytes) -> None:
    with pytest.raises(ImageRejected, match="not a readable image"):
        to_png(data)
