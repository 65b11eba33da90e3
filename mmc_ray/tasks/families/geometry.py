"""Geometry on a unit grid: the longest/shortest side of a triangle, or the largest/smallest
rectangle.

Triangle ABC with vertices on grid points -> `measure` each side (grid units, one decimal) +
`argmax`/`argmin`. Rectangles R1..Rk with integer sides -> `measure` width and height and `mul`
for each, then `argmax`/`argmin` over the areas. Both are multiple choice. The winner beats the
runner-up by a relative margin inside a window that tightens with difficulty, so easy tasks are
obvious at a glance and hard ones need the measurements, yet every task has one clear answer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from PIL import ImageDraw

from mmc_ray.tasks.families import TaskInstance, check_difficulty, with_choices
from mmc_ray.tasks.families.drawing import (
    COLOURS,
    GRID_MAJOR,
    INK,
    PALETTE,
    RENDER_SIZE,
    Box,
    draw_grid,
    draw_text,
    new_canvas,
)
from mmc_ray.tasks.solution import SolutionStep, format_number

# difficulty -> (min, max) relative margin between the winning and the runner-up value
MARGINS = {1: (0.25, math.inf), 2: (0.20, math.inf), 3: (0.15, 0.6), 4: (0.10, 0.35), 5: (0.05, 0.2)}
TRIANGLE_GRID = {1: 8, 2: 8, 3: 10, 4: 10, 5: 12}  # grid cells per side
RECTANGLES = {1: 2, 2: 3, 3: 3, 4: 4, 5: 4}  # rectangles to compare
RECT_GRID, QUADRANT, MAX_SIDE = 17, 8, 7  # 2x2 quadrants of 8 cells inside a 1-cell border
MARGIN = 24
MAX_TRIES = 10_000

EXTREMES = {"argmax": ("longest", "largest", max), "argmin": ("shortest", "smallest", min)}


def make(rng: random.Random, difficulty: int) -> TaskInstance:
    check_difficulty(difficulty)
    op = rng.choice(tuple(EXTREMES))
    if rng.random() < 0.5:
        return _triangle(rng, difficulty, op)
    return _rectangles(rng, difficulty, op)


def observation_template(name: str) -> str:
    """The step (and description sentence) that observes the fact `name` (a triangle's side "AB",
    a rectangle's "R1 width"); `{value}` left open."""
    if " " in name:
        rectangle, side = name.split(" ")
        return f"Measure the {side} of {rectangle}: it is {{value}} units."
    return f"Measure side {name}: it is {{value}} units long."


def _margin_ok(values: list[float], op: str, difficulty: int) -> bool:
    """Whether the best value beats the runner-up by a relative margin inside the level's window."""
    ordered = sorted(values, reverse=op == "argmax")
    best, runner_up = ordered[0], ordered[1]
    margin = abs(best - runner_up) / min(best, runner_up)
    low, high = MARGINS[difficulty]
    return low <= margin <= high


def _triangle(rng: random.Random, difficulty: int, op: str) -> TaskInstance:
    grid = TRIANGLE_GRID[difficulty]
    names = ("AB", "BC", "CA")
    for _ in range(MAX_TRIES):
        pts = [(rng.randint(1, grid - 1), rng.randint(1, grid - 1)) for _ in range(3)]
        lengths = [round(math.dist(pts[i], pts[(i + 1) % 3]), 1) for i in range(3)]
        (ax, ay), (bx, by), (cx, cy) = pts
        twice_area = abs((bx - ax) * (cy - ay) - (cx - ax) * (by - ay))
        # Sides of 3+ cells and no sliver triangles keep the vertex labels apart and readable.
        if min(lengths) >= 3 and twice_area >= 2 * grid and _margin_ok(lengths, op, difficulty):
            break
    else:  # pragma: no cover - the windows are wide enough that this never happens
        raise RuntimeError(f"no triangle found for difficulty {difficulty}")

    side_word, _, pick = EXTREMES[op]
    steps = [SolutionStep("measure", observation_template(n), format_number(x), label=n)
             for n, x in zip(names, lengths, strict=True)]
    winner = names[lengths.index(pick(lengths))]
    steps.append(SolutionStep(op, f"The {side_word} side is {{value}}.", winner, (0, 1, 2),
                              label=" ".join(names)))
    question = with_choices(f"On the unit grid, which side of triangle ABC is the {side_word}?", names)

    image, draw = new_canvas()
    _draw_grid(draw, grid)
    to_px = _to_px(grid)
    corners = [to_px(p) for p in pts]
    draw.polygon(corners, outline=PALETTE["blue"], width=5)
    centre = (sum(x for x, _ in corners) / 3, sum(y for _, y in corners) / 3)
    for name, (x, y) in zip("ABC", corners, strict=True):
        draw.ellipse((x - 7, y - 7, x + 7, y + 7), fill=INK)
        dx, dy = x - centre[0], y - centre[1]
        norm = math.hypot(dx, dy) or 1.0
        draw_text(draw, (x + 24 * dx / norm, y + 24 * dy / norm), name, 28)  # outside the triangle
    facts = tuple((n, format_number(x)) for n, x in zip(names, lengths, strict=True))
    regions = tuple((n, (_segment_box(corners[i], corners[(i + 1) % 3]),)) for i, n in enumerate(names))
    return TaskInstance(question, image, tuple(steps), winner, "choice", names, facts=facts, regions=regions)


def _rectangles(rng: random.Random, difficulty: int, op: str) -> TaskInstance:
    k = RECTANGLES[difficulty]
    for _ in range(MAX_TRIES):
        sizes = [(rng.randint(2, MAX_SIDE), rng.randint(2, MAX_SIDE)) for _ in range(k)]
        if _margin_ok([w * h for w, h in sizes], op, difficulty):
            break
    else:  # pragma: no cover
        raise RuntimeError(f"no rectangles found for difficulty {difficulty}")

    names = tuple(f"R{i + 1}" for i in range(k))
    steps: list[SolutionStep] = []
    for name, (w, h) in zip(names, sizes, strict=True):
        steps += [
            SolutionStep("measure", observation_template(f"{name} width"), str(w), label=f"{name} width"),
            SolutionStep("measure", observation_template(f"{name} height"), str(h), label=f"{name} height"),
            SolutionStep("mul", f"The area of {name} is {{0}} × {{1}} = {{value}}.", str(w * h),
                         (len(steps), len(steps) + 1), label=name),
        ]
    _, size_word, pick = EXTREMES[op]
    areas = [w * h for w, h in sizes]
    winner = names[areas.index(pick(areas))]
    steps.append(SolutionStep(op, f"The {size_word} rectangle is {{value}}.", winner,
                              tuple(range(2, 3 * k, 3)), label=" ".join(names)))
    question = with_choices(f"On the unit grid, which rectangle has the {size_word} area?", names)

    image, draw = new_canvas()
    to_px = _to_px(RECT_GRID)
    boxes = []
    for quadrant, (w, h) in zip(rng.sample(range(4), k), sizes, strict=True):
        # Each rectangle stays inside its own quadrant, so rectangles never touch.
        x = 1 + QUADRANT * (quadrant % 2) + rng.randint(0, MAX_SIDE - w)
        y = 1 + QUADRANT * (quadrant // 2) + rng.randint(0, MAX_SIDE - h)
        boxes.append((*to_px((x, y)), *to_px((x + w, y + h))))
    colours = [PALETTE[c] for c in rng.sample(COLOURS, k)]
    for box, rgb in zip(boxes, colours, strict=True):
        draw.rectangle(box, fill=tuple(255 - (255 - c) // 4 for c in rgb))
    _draw_grid(draw, RECT_GRID)  # over the fills, so the cells inside a rectangle stay countable
    for name, box, rgb in zip(names, boxes, colours, strict=True):
        draw.rectangle(box, outline=rgb, width=4)
        draw_text(draw, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), name, 24)
    facts = tuple((f"{name} {side}", str(x)) for name, (w, h) in zip(names, sizes, strict=True)
                  for side, x in (("width", w), ("height", h)))
    regions = tuple((f"{name} {side}", (box,)) for name, box in zip(names, boxes, strict=True)
                    for side in ("width", "height"))
    return TaskInstance(question, image, tuple(steps), winner, "choice", names, facts=facts, regions=regions)


def _segment_box(a: tuple[float, float], b: tuple[float, float], pad: float = 12) -> Box:
    """The box around the segment ab (with its end points' labels' margin)."""
    return (min(a[0], b[0]) - pad, min(a[1], b[1]) - pad, max(a[0], b[0]) + pad, max(a[1], b[1]) + pad)


def _to_px(cells: int) -> Callable[[tuple[float, float]], tuple[float, float]]:
    """Grid coordinates -> render pixels, for a cells x cells grid filling the canvas."""
    step = (RENDER_SIZE - 2 * MARGIN) / cells
    return lambda p: (MARGIN + p[0] * step, MARGIN + p[1] * step)


def _draw_grid(draw: ImageDraw.ImageDraw, cells: int) -> None:
    box = (MARGIN, MARGIN, RENDER_SIZE - MARGIN, RENDER_SIZE - MARGIN)
    draw_grid(draw, box, cells, cells)
    draw.rectangle(box, outline=GRID_MAJOR, width=2)
