"""Arithmetic: integers written in coloured boxes; compute an expression named by box colours.

"Multiply the number in the red box by the number in the blue box, then add the number in the green
box." -> one `read_number` per box used, then the operations applied left to right (`mul`, `add`,
`sub`), each on the previous result. Higher difficulty means more numbers, larger values, mixed
operations, and extra boxes the question never mentions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from mmc_ray.tasks.families import TaskInstance, check_difficulty
from mmc_ray.tasks.families.drawing import COLOURS, INK, PALETTE, RENDER_SIZE, Box, draw_text, new_canvas
from mmc_ray.tasks.solution import SolutionStep, apply_op

SYMBOL = {"add": "+", "sub": "-", "mul": "×"}
VERB = {"add": "Add", "sub": "Subtract", "mul": "Multiply"}


@dataclass(frozen=True)
class Level:
    operands: int  # numbers the expression uses
    distractors: tuple[int, int]  # min, max boxes shown but not used
    values: tuple[int, int]  # range of the numbers
    ops: tuple[str, ...]  # operations to draw from; at most one "mul" keeps results readable


LEVELS = {
    1: Level(2, (0, 0), (1, 9), ("add", "sub")),
    2: Level(3, (0, 1), (1, 20), ("add", "sub")),
    3: Level(3, (1, 1), (2, 30), ("add", "sub", "mul")),
    4: Level(4, (1, 2), (2, 50), ("add", "sub", "mul")),
    5: Level(5, (1, 1), (10, 99), ("add", "sub", "mul")),
}


def make(rng: random.Random, difficulty: int) -> TaskInstance:
    check_difficulty(difficulty)
    level = LEVELS[difficulty]
    n_boxes = level.operands + rng.randint(*level.distractors)
    colours = rng.sample(COLOURS, n_boxes)  # the first `operands` colours are the ones used
    numbers = [rng.randint(*level.values) for _ in colours]
    ops = _pick_ops(rng, level, numbers[: level.operands])

    names = [f"{c} box" for c in colours[: level.operands]]
    steps = [SolutionStep("read_number", observation_template(name), str(x), label=name)
             for name, x in zip(names, numbers[: level.operands], strict=True)]
    clauses = [_first_clause(ops[0], names[0], names[1])]
    acc = apply_op(ops[0], [steps[0].value, steps[1].value], ["", ""])
    steps.append(SolutionStep(ops[0], f"{VERB[ops[0]]} them: {{0}} {SYMBOL[ops[0]]} {{1}} = {{value}}.",
                              acc, (0, 1)))
    for k, op in enumerate(ops[1:], start=2):
        clauses.append(f"then {VERB[op].lower()} {'by ' if op == 'mul' else ''}the number in the {names[k]}")
        acc = apply_op(op, [acc, steps[k].value], ["", ""])
        what = f"{VERB[op]} {'by ' if op == 'mul' else ''}the {colours[k]} number"
        steps.append(SolutionStep(op, f"{what}: {{0}} {SYMBOL[op]} {{1}} = {{value}}.", acc,
                                  (len(steps) - 1, k)))
    question = f"{', '.join(clauses)}. What is the result?"
    order = list(range(n_boxes))
    rng.shuffle(order)  # where each box is drawn
    image, boxes = _draw([colours[i] for i in order], [numbers[i] for i in order], difficulty)
    facts = tuple((f"{c} box", str(x)) for c, x in zip(colours, numbers, strict=True))  # distractors too
    regions = tuple((f"{colours[i]} box", (box,)) for i, box in zip(order, boxes, strict=True))
    return TaskInstance(question, image, tuple(steps), acc, "integer", facts=facts, regions=regions)


def observation_template(name: str) -> str:
    """The step (and description sentence) that observes the fact `name`; `{value}` left open."""
    return f"Read the number in the {name}: it is {{value}}."


def _first_clause(op: str, a: str, b: str) -> str:
    if op == "sub":
        return f"Subtract the number in the {b} from the number in the {a}"
    joiner = "by" if op == "mul" else "and"
    return f"{VERB[op]} the number in the {a} {joiner} the number in the {b}"


def _pick_ops(rng: random.Random, level: Level, numbers: list[int]) -> list[str]:
    """Operations applied left to right. Results stay non-negative (a subtraction that would go
    below zero becomes an addition) and there is at most one multiplication."""
    ops: list[str] = []
    acc = numbers[0]
    for x in numbers[1:]:
        allowed = [o for o in level.ops if o != "mul" or "mul" not in ops]
        op = rng.choice(allowed)
        if op == "sub" and x > acc:
            op = "add"
        ops.append(op)
        acc = {"add": acc + x, "sub": acc - x, "mul": acc * x}[op]
    return ops


def _draw(colours: list[str], numbers: list[int], difficulty: int) -> tuple[Image.Image, list[Box]]:
    """Boxes on a 2- or 3-column grid; a thick coloured border says which box is which. Returns the
    image and each box's rectangle."""
    image, draw = new_canvas()
    boxes: list[Box] = []
    cols = 2 if len(colours) <= 4 else 3
    rows = -(-len(colours) // cols)
    cell_w, cell_h = RENDER_SIZE / cols, RENDER_SIZE / rows
    w, h = min(0.78 * cell_w, 170), min(0.7 * cell_h, 130)
    for i, (colour, x) in enumerate(zip(colours, numbers, strict=True)):
        cx, cy = (i % cols + 0.5) * cell_w, (i // cols + 0.5) * cell_h
        rgb = PALETTE[colour]
        tint = tuple(255 - (255 - c) // 6 for c in rgb)  # pale fill in the border's hue
        boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        draw.rounded_rectangle(boxes[-1], radius=14, fill=tint, outline=rgb, width=9)
        draw_text(draw, (cx, cy), str(x), 56 if difficulty < 5 else 50, fill=INK)
    return image, boxes
