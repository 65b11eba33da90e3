"""Counting: coloured shapes scattered on a white canvas; count one or more groups and combine.

"How many red shapes and blue circles are there in total?" -> one `count` step per group, then
`add` / `sum` (or `sub` for "how many more ... than ..."). Groups always have distinct colours, so
they never overlap and the total is a plain sum. Higher difficulty means more shapes, more groups,
more colours and more near-miss distractors (a red square next to the red circles being counted).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from mmc_ray.tasks.families import TaskInstance, check_difficulty, join_words
from mmc_ray.tasks.families.drawing import COLOURS, INK, PALETTE, RENDER_SIZE, Box, new_canvas
from mmc_ray.tasks.solution import SolutionStep

SHAPES = ("circle", "square", "triangle")
MARGIN = 12

# difficulty -> (shapes on the canvas, (min, max) groups asked about, colours on the canvas)
LEVELS = {
    1: ((4, 6), (1, 1), 3),
    2: ((6, 9), (1, 2), 4),
    3: ((8, 12), (2, 2), 4),
    4: ((11, 15), (2, 3), 5),
    5: ((14, 20), (3, 4), 6),
}


@dataclass(frozen=True)
class Group:
    """What one count step counts: a colour, a shape, or both (None = any)."""

    colour: str | None
    shape: str | None

    @property
    def name(self) -> str:
        return f"{self.colour or ''} {self.shape or 'shape'}s".strip()

    def matches(self, shape: str, colour: str) -> bool:
        return self.colour in (None, colour) and self.shape in (None, shape)


def make(rng: random.Random, difficulty: int) -> TaskInstance:
    check_difficulty(difficulty)
    (lo, hi), (g_lo, g_hi), n_colours = LEVELS[difficulty]
    n_objects = rng.randint(lo, hi)
    colours = rng.sample(COLOURS, n_colours)
    groups = _pick_groups(rng, colours, rng.randint(g_lo, g_hi), difficulty)

    # At least ~30% of the shapes are distractors, so no group can be counted as "everything".
    cap = max(1, (n_objects - math.ceil(0.3 * n_objects)) // len(groups))
    counts = [rng.randint(1, cap) for _ in groups]
    objects = [(g.shape or rng.choice(SHAPES), g.colour or rng.choice(colours))
               for g, c in zip(groups, counts, strict=True) for _ in range(c)]
    # Distractors: any (shape, colour) on the canvas that no group counts, near misses included.
    others = [(s, c) for c in colours for s in SHAPES if not any(g.matches(s, c) for g in groups)]
    objects += [rng.choice(others) for _ in range(n_objects - len(objects))]
    rng.shuffle(objects)

    steps = [SolutionStep("count", observation_template(g.name), str(c), label=g.name)
             for g, c in zip(groups, counts, strict=True)]
    names = [g.name for g in groups]
    if len(groups) == 1:
        question = f"How many {names[0]} are there?"
    elif len(groups) == 2 and counts[0] != counts[1] and rng.random() < 0.35:
        # "How many more": the larger group is named first so the answer is a plain subtraction.
        if counts[0] < counts[1]:
            steps.reverse()
            names.reverse()
        question = f"How many more {names[0]} are there than {names[1]}?"
        steps.append(SolutionStep("sub", "Subtract the counts: {0} - {1} = {value}.",
                                  str(abs(counts[0] - counts[1])), (0, 1)))
    elif len(groups) == 2:
        question = f"How many {join_words(names)} are there in total?"
        steps.append(SolutionStep("add", "Add the counts: {0} + {1} = {value}.", str(sum(counts)), (0, 1)))
    else:
        question = f"How many {join_words(names)} are there in total?"
        steps.append(SolutionStep("sum", "Add them up: {plus} = {value}.", str(sum(counts)),
                                  tuple(range(len(groups)))))
    answer = steps[-1].value
    image, boxes = _draw(rng, objects)
    regions = tuple((g.name, tuple(box for (shape, colour), box in zip(objects, boxes, strict=True)
                                   if g.matches(shape, colour))) for g in _fact_groups())
    return TaskInstance(question, image, tuple(steps), answer, "integer", facts=scene_facts(objects),
                        regions=regions)


def observation_template(name: str) -> str:
    """The step (and description sentence) that observes the fact `name`; `{value}` left open."""
    return f"Count the {name}: there are {{value}}."


def scene_facts(objects: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The count of every group a question can name (colour and shape, colour alone, shape alone),
    zero included, so "how many red squares" has an answer in the facts whatever is drawn."""
    return tuple((g.name, str(sum(g.matches(s, c) for s, c in objects))) for g in _fact_groups())


def _fact_groups() -> list[Group]:
    """Every group a question can name: colour and shape, colour alone, shape alone."""
    return [Group(c, s) for c in COLOURS for s in (*SHAPES, None)] + [Group(None, s) for s in SHAPES]


def _pick_groups(rng: random.Random, colours: list[str], n: int, difficulty: int) -> list[Group]:
    """`n` disjoint groups: each has its own colour (a lone group may be a shape only)."""
    if n == 1 and rng.random() < 0.3:
        return [Group(None, rng.choice(SHAPES))]
    with_shape = 0.4 + 0.1 * difficulty  # naming the shape too invites near-miss distractors
    return [Group(c, rng.choice(SHAPES) if rng.random() < with_shape else None)
            for c in rng.sample(colours, n)]


def _draw(rng: random.Random, objects: list[tuple[str, str]]) -> tuple[Image.Image, list[Box]]:
    """Objects placed one per cell of a jittered grid, so they never overlap. Returns the image and
    each object's bounding box."""
    image, draw = new_canvas()
    boxes: list[Box] = []
    side = math.ceil(math.sqrt(1.6 * len(objects)))
    cell = (RENDER_SIZE - 2 * MARGIN) / side
    cells = rng.sample(range(side * side), len(objects))
    for (shape, colour), k in zip(objects, cells, strict=True):
        r = min(0.34 * cell, 36) * rng.uniform(0.85, 1.0)
        slack = cell / 2 - r - 2
        cx = MARGIN + (k % side + 0.5) * cell + rng.uniform(-slack, slack)
        cy = MARGIN + (k // side + 0.5) * cell + rng.uniform(-slack, slack)
        _draw_shape(draw, shape, cx, cy, r, PALETTE[colour])
        boxes.append((cx - r, cy - r, cx + r, cy + r))
    return image, boxes


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=INK, width=2)
    elif shape == "square":
        h = 0.85 * r  # a slightly smaller square looks about as large as the circle
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill, outline=INK, width=2)
    else:
        pts = [(cx, cy - r), (cx - 0.95 * r, cy + 0.75 * r), (cx + 0.95 * r, cy + 0.75 * r)]
        draw.polygon(pts, fill=fill, outline=INK, width=2)
