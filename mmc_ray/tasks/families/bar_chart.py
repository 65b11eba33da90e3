"""Bar charts: labelled bars with integer values on a gridded y-axis.

Every value sits exactly on a gridline, so it can be read off the chart without guessing. Questions
ask for one bar's value (`read_bar`), the difference of two (`read_bar` x2 + `diff`), the total of
several (`read_bar`s + `add`/`sum`) or which bar is tallest/shortest (every bar read + `argmax` /
`argmin`, a multiple-choice answer; values are distinct so the winner is unique). Higher difficulty
means more bars, finer gridlines with fewer numbered ticks, and longer sums.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from mmc_ray.tasks.families import TaskInstance, check_difficulty, join_words, with_choices
from mmc_ray.tasks.families.drawing import COLOURS, INK, PALETTE, Box, draw_grid, draw_text, new_canvas
from mmc_ray.tasks.solution import SolutionStep

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
TITLES = ("Books read", "Units sold", "Visitors", "Rainfall (mm)", "Points scored", "Tickets sold")
PLOT = (66, 52, 432, 392)  # left, top, right, bottom of the plotting area in render pixels
KINDS = ("value", "diff", "sum", "extreme")


@dataclass(frozen=True)
class Level:
    bars: tuple[int, int]  # min, max number of bars
    unit: int  # value between adjacent gridlines; every value is a multiple of it
    gridlines: int  # the axis runs from 0 to unit * gridlines
    label_every: int  # a numbered tick every this many gridlines
    sum_terms: tuple[int, int]  # min, max bars in a "total" question
    weights: tuple[float, float, float, float]  # of KINDS


LEVELS = {
    1: Level((3, 4), 1, 10, 1, (2, 2), (0.4, 0.2, 0.2, 0.2)),
    2: Level((4, 5), 2, 10, 1, (2, 3), (0.25, 0.25, 0.25, 0.25)),
    3: Level((5, 6), 5, 10, 2, (2, 3), (0.15, 0.3, 0.3, 0.25)),
    4: Level((6, 7), 2, 20, 5, (3, 4), (0.1, 0.3, 0.3, 0.3)),
    5: Level((7, 8), 5, 24, 4, (3, 5), (0.05, 0.25, 0.35, 0.35)),
}


def make(rng: random.Random, difficulty: int) -> TaskInstance:
    check_difficulty(difficulty)
    level = LEVELS[difficulty]
    n = rng.randint(*level.bars)
    if rng.random() < 0.5:
        names = [chr(ord("A") + i) for i in range(n)]
    else:
        start = rng.randrange(12)
        names = [MONTHS[(start + i) % 12] for i in range(n)]
    values = [level.unit * k for k in rng.sample(range(1, level.gridlines + 1), n)]  # distinct
    image, boxes = _draw(rng, level, names, values)

    def read(i: int) -> SolutionStep:
        return SolutionStep("read_bar", observation_template(names[i]), str(values[i]), label=names[i])

    kind = rng.choices(KINDS, weights=level.weights)[0]
    choices: tuple[str, ...] = ()
    if kind == "value":
        i = rng.randrange(n)
        question = f"What is the value of bar {names[i]}?"
        steps = [read(i)]
    elif kind == "diff":
        hi, lo = sorted(rng.sample(range(n), 2), key=values.__getitem__, reverse=True)
        question = f"How much greater is the value of bar {names[hi]} than that of bar {names[lo]}?"
        steps = [read(hi), read(lo),
                 SolutionStep("diff", "Subtract: {0} - {1} = {value}.", str(values[hi] - values[lo]),
                              (0, 1))]
    elif kind == "sum":
        picked = sorted(rng.sample(range(n), min(n, rng.randint(*level.sum_terms))))
        question = f"What is the total value of bars {join_words([names[i] for i in picked])}?"
        steps = [read(i) for i in picked]
        total = str(sum(values[i] for i in picked))
        inputs = tuple(range(len(picked)))
        steps.append(SolutionStep("add", "Add them: {0} + {1} = {value}.", total, inputs)
                     if len(picked) == 2 else
                     SolutionStep("sum", "Add them up: {plus} = {value}.", total, inputs))
    else:
        op, word, pick = rng.choice((("argmax", "tallest", max), ("argmin", "shortest", min)))
        choices = tuple(names)
        question = with_choices(f"Which bar is the {word}?", choices)
        steps = [read(i) for i in range(n)]
        winner = names[pick(range(n), key=values.__getitem__)]
        steps.append(SolutionStep(op, f"The {word} bar is {{value}}.", winner, tuple(range(n)),
                                  label=" ".join(names)))
    answer = steps[-1].value
    facts = tuple((name, str(value)) for name, value in zip(names, values, strict=True))
    regions = tuple((name, (box,)) for name, box in zip(names, boxes, strict=True))
    return TaskInstance(question, image, tuple(steps), answer, "choice" if choices else "integer", choices,
                        facts=facts, regions=regions, cues=_cues(level, names, values))


def _cues(level: Level, names: list[str], values: list[int]) -> tuple[tuple[str, str], ...]:
    """Each bar's gridline (by name) and label (by position), and the step between gridlines."""
    gridlines = [(f"{name} gridline", str(value // level.unit))
                 for name, value in zip(names, values, strict=True)]
    labels = [(f"bar {i + 1} label", name) for i, name in enumerate(names)]
    return (*gridlines, *labels, ("gridline step", str(level.unit)))


def observation_template(name: str) -> str:
    """The step (and description sentence) that observes the fact `name`; `{value}` left open."""
    return f"Read bar {name}: its value is {{value}}."


def _draw(rng: random.Random, level: Level, names: list[str],
          values: list[int]) -> tuple[Image.Image, list[Box]]:
    """The chart, and each bar's column: the bar with its label below."""
    image, draw = new_canvas()
    boxes: list[Box] = []
    left, top, right, bottom = PLOT
    draw_text(draw, ((left + right) / 2, 24), rng.choice(TITLES), 26)
    draw_grid(draw, (left, top, right, bottom), 1, level.gridlines, major_every=level.label_every)
    for j in range(0, level.gridlines + 1, level.label_every):
        y = bottom - (bottom - top) * j / level.gridlines
        draw_text(draw, (left - 8, y), str(j * level.unit), 20, anchor="rm")

    colour = PALETTE[rng.choice(COLOURS)]
    slot = (right - left) / len(names)
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        x = left + (i + 0.5) * slot
        y = bottom - (bottom - top) * value / (level.unit * level.gridlines)
        draw.rectangle((x - 0.32 * slot, y, x + 0.32 * slot, bottom), fill=colour, outline=INK, width=2)
        draw_text(draw, (x, bottom + 22), name, 22 if len(name) == 1 else 19)
        boxes.append((x - 0.32 * slot, y, x + 0.32 * slot, bottom + 34))
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=INK, width=3)
    return image, boxes
