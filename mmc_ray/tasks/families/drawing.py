"""Drawing helpers shared by the task families: canvas, palette, fonts, grids, PNG encoding.

Every family draws on a fixed RENDER_SIZE canvas (an abstract coordinate system) and the generator
resizes the result to the requested image size. Nothing a family decides (positions, values,
steps) can therefore depend on the output size, and the downscale anti-aliases PIL's jagged shapes.
"""

from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

RENDER_SIZE = 448  # twice the default output size: 2x supersampling at 224 px
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
GRID = (205, 205, 205)
GRID_MAJOR = (150, 150, 150)

# Colour names a question may mention. Hues are far apart so they stay distinct after downscaling;
# yellow is darkened towards gold to be visible on white.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 90, 220),
    "green": (30, 150, 60),
    "yellow": (235, 190, 0),
    "purple": (140, 60, 180),
    "orange": (245, 125, 20),
}
COLOURS = tuple(PALETTE)

Box = tuple[float, float, float, float]  # left, top, right, bottom in render coordinates


def new_canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A blank white RENDER_SIZE x RENDER_SIZE RGB image and a drawing context for it."""
    image = Image.new("RGB", (RENDER_SIZE, RENDER_SIZE), BACKGROUND)
    return image, ImageDraw.Draw(image)


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at `size` render pixels (no font files to ship or download)."""
    return ImageFont.load_default(size=size)


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int,
              fill: tuple[int, int, int] = INK, anchor: str = "mm") -> None:
    """Text anchored at `xy` ("mm" = centred), in the shared font."""
    draw.text(xy, text, fill=fill, font=font(size), anchor=anchor)


def draw_grid(draw: ImageDraw.ImageDraw, box: Box, cols: int, rows: int, major_every: int = 0) -> None:
    """A cols x rows grid of unit cells filling `box`; every `major_every`-th line is darker."""
    left, top, right, bottom = box
    for i in range(cols + 1):
        x = left + (right - left) * i / cols
        major = major_every and i % major_every == 0
        draw.line([(x, top), (x, bottom)], fill=GRID_MAJOR if major else GRID, width=2 if major else 1)
    for j in range(rows + 1):
        y = top + (bottom - top) * j / rows
        major = major_every and j % major_every == 0
        draw.line([(left, y), (right, y)], fill=GRID_MAJOR if major else GRID, width=2 if major else 1)


def to_png(image: Image.Image, size: int = RENDER_SIZE) -> bytes:
    """The image resized to size x size and encoded as PNG (deterministic bytes for equal input)."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
