"""Dense descriptions of synthetic images, written from the renderer's facts: the alignment data of
a model that learns to see (every value the image shows, not only what one question asks).

Each fact is said with the observation sentence a solution step uses for it ("Count the red
circles: there are 2."), so what a model learns to say about an image is what it later writes
while solving. The order is shuffled per image, so a model must find each value by its name in the
image instead of reciting a fixed order.
"""

from __future__ import annotations

import random
from typing import Any

from mmc_ray.tasks.families import OBSERVATION_TEMPLATES
from mmc_ray.tasks.problem import Problem

DESCRIBE_INSTRUCTION = "Describe everything the image shows, one fact a line."


def description(problem: Problem, facts: tuple[tuple[str, str], ...], rng: random.Random) -> str:
    """Every fact of `problem`'s image but zero counts (nothing drawn to see), one sentence a line."""
    return "\n".join(line for _, _, line in described_facts(problem, facts, rng))


def described_facts(problem: Problem, facts: tuple[tuple[str, str], ...],
                    rng: random.Random) -> list[tuple[str, int, str]]:
    """`description`'s lines in order, each with its fact's name and where in the line its value is."""
    template = OBSERVATION_TEMPLATES[problem.family]
    lines = [(name, template(name).index("{value}"), template(name).format(value=value))
             for name, value in facts if value != "0"]
    rng.shuffle(lines)
    return lines


def describe_messages(problem: Problem) -> tuple[dict[str, Any], ...]:
    """Chat messages asking for a description of `problem`'s image."""
    return ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DESCRIBE_INSTRUCTION}]},)
