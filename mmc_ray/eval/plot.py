"""A small line chart drawn with PIL (no plotting library to install): accuracy against round."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from mmc_ray.tasks.families.drawing import PALETTE, font

WIDTH, HEIGHT = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 190, 50, 60  # margins; the legend sits in the right one
INK, GRID = (20, 20, 20), (225, 225, 225)
SERIES_COLOURS = [(20, 20, 20), *PALETTE.values()]


def line_chart(series: Mapping[str, Sequence[float | None]], path: str | Path, title: str,
               x_label: str, y_label: str) -> Path:
    """One line per series over x = 0..len-1, y in [0, 1]; None values are gaps."""
    path = Path(path)
    image = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    points = max((len(v) for v in series.values()), default=1)

    def to_xy(i: int, y: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * (i / max(1, points - 1)), y0 + (y1 - y0) * y

    for tick in range(6):
        y = tick / 5
        _, py = to_xy(0, y)
        draw.line([(x0, py), (x1, py)], fill=GRID)
        draw.text((x0 - 8, py), f"{y:.1f}", fill=INK, font=font(13), anchor="rm")
    for i in range(points):
        px, _ = to_xy(i, 0)
        draw.text((px, y0 + 10), str(i), fill=INK, font=font(13), anchor="mt")
    draw.rectangle([x0, y1, x1, y0], outline=INK)
    draw.text((WIDTH / 2, 20), title, fill=INK, font=font(17), anchor="mm")
    draw.text(((x0 + x1) / 2, HEIGHT - 22), x_label, fill=INK, font=font(14), anchor="mm")
    draw.text((x0, y1 - 16), y_label, fill=INK, font=font(14), anchor="lm")
    for k, (name, values) in enumerate(series.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        xy = [to_xy(i, v) if v is not None else None for i, v in enumerate(values)]
        for a, b in itertools.pairwise(xy):
            if a and b:
                draw.line([a, b], fill=colour, width=3 if k == 0 else 2)
        for p in xy:
            if p:
                draw.ellipse([p[0] - 4, p[1] - 4, p[0] + 4, p[1] + 4], fill=colour)
        ly = TOP + 10 + 22 * k
        draw.line([(x1 + 16, ly), (x1 + 40, ly)], fill=colour, width=3)
        draw.text((x1 + 46, ly), name, fill=INK, font=font(13), anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
