"""Synthetic problems from the task families, reproducible from their ids.

A problem id is "{family}-d{difficulty}-s{seed}" and the task's random stream is seeded from that
id alone, so `problem_from_id` regenerates exactly the same question, image and solution steps.
This is how the simulated actor and later stages recover ground truth without storing it.
Kept free of ray and torch imports: task generation runs anywhere.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence

from mmc_ray.errors import BadInput
from mmc_ray.tasks.families import DIFFICULTIES, FAMILIES, check_difficulty
from mmc_ray.tasks.families.drawing import RENDER_SIZE, to_png
from mmc_ray.tasks.problem import Problem

Facts = tuple[tuple[str, str], ...]  # TaskInstance.facts: (name, value) of everything an image shows
Cues = Facts  # TaskInstance.cues: (name, value) of the parts a fact's value is read from
# TaskInstance.regions: (fact name, its boxes: left, top, right, bottom as fractions of the image side)
Regions = tuple[tuple[str, tuple[tuple[float, float, float, float], ...]], ...]

DEFAULT_IMAGE_SIZE = 224
MIN_IMAGE_SIZE = 32
# A synthetic id, alone or after a prefix ("mine-counting-d2-s17": the benchmark loader names a
# file's problems "<file name>-<row id>", so synthetic problems exported to a file stay solvable).
_ID = re.compile(r"(?:^|.*-)(?P<family>[a-z_]+)-d(?P<difficulty>\d+)-s(?P<seed>\d+)$")
_SEED_STRIDE = 1 << 32  # generate_problems: seed s, index i -> problem seed s * stride + i


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise BadInput(f"unknown task family {family!r}; allowed: {sorted(FAMILIES)}")
    return family


def make_problem_id(family: str, difficulty: int, seed: int) -> str:
    return f"{family}-d{difficulty}-s{seed}"


def generate_problem(family: str, difficulty: int, seed: int,
                     image_size: int = DEFAULT_IMAGE_SIZE) -> Problem:
    """One problem of `family` at `difficulty`, fully determined by (family, difficulty, seed).

    The image is drawn at a fixed internal resolution and resized, so the question, answer and
    steps do not depend on `image_size`."""
    return problem_with_facts(family, difficulty, seed, image_size)[0]


def problem_with_facts(family: str, difficulty: int, seed: int,
                       image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[Problem, Facts]:
    """`generate_problem`'s problem with everything its image shows (`TaskInstance.facts`)."""
    return problem_scene(family, difficulty, seed, image_size)[:2]


def problem_scene(family: str, difficulty: int, seed: int,
                  image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[Problem, Facts, Regions, Cues]:
    """`problem_with_facts`, where each fact is drawn (`TaskInstance.regions`, in fractions of the
    image's side, so they hold at any resolution), and what the values are composed of
    (`TaskInstance.cues`)."""
    _check_family(family)
    check_difficulty(difficulty)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE} pixels, got {image_size}")
    problem_id = make_problem_id(family, difficulty, seed)
    # Seeding with the id string (hashed with SHA-512 by `random`) gives each family and difficulty
    # its own stream for the same seed, independent of PYTHONHASHSEED.
    task = FAMILIES[family](random.Random(problem_id), difficulty)
    problem = Problem(
        problem_id=problem_id,
        family=family,
        question=task.question,
        image=to_png(task.image, image_size),
        answer=task.answer,
        answer_type=task.answer_type,
        choices=task.choices,
        difficulty=difficulty,
        seed=seed,
        steps=task.steps,
        source="synthetic",
    )
    regions = tuple((name, tuple(tuple(v / RENDER_SIZE for v in box) for box in boxes))
                    for name, boxes in task.regions)
    return problem, task.facts, regions, task.cues


def generate_problems(n: int, seed: int = 0, families: Sequence[str] | None = None,
                      difficulties: Sequence[int] = (1, 2, 3),
                      image_size: int = DEFAULT_IMAGE_SIZE) -> Iterator[Problem]:
    """`n` problems cycling through every (family, difficulty) pair: families vary fastest.

    Problem i gets seed `seed * 2**32 + i`, so seeds are distinct within a run and runs with
    different `seed`s never share a problem."""
    return (generate_problem(*key, image_size) for key in problem_keys(n, seed, families, difficulties))


def problem_keys(n: int, seed: int, families: Sequence[str] | None,
                 difficulties: Sequence[int]) -> Iterator[tuple[str, int, int]]:
    """(family, difficulty, seed) of each of `n` problems, validated eagerly (the problems themselves
    are made lazily, one at a time)."""
    families = tuple(FAMILIES) if families is None else tuple(families)
    difficulties = tuple(difficulties)
    if not families:
        raise BadInput(f"families must not be empty; allowed: {sorted(FAMILIES)}")
    if not difficulties:
        raise BadInput(f"difficulties must not be empty; allowed: {list(DIFFICULTIES)}")
    for f in families:
        _check_family(f)
    for d in difficulties:
        check_difficulty(d)
    if n < 0 or n > _SEED_STRIDE:
        raise ValueError(f"n must be in 0..{_SEED_STRIDE}, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return ((families[i % len(families)], difficulties[(i // len(families)) % len(difficulties)],
             seed * _SEED_STRIDE + i) for i in range(n))


def problem_from_id(problem_id: str, image_size: int = DEFAULT_IMAGE_SIZE) -> Problem:
    """Regenerate the problem with this id (as made by `generate_problem` at `image_size`)."""
    m = _ID.match(problem_id) if isinstance(problem_id, str) else None
    if m is None:
        raise ValueError(f"not a synthetic problem id: {problem_id!r}; expected "
                         f"'<family>-d<difficulty>-s<seed>', e.g. 'counting-d2-s17'")
    return generate_problem(_check_family(m["family"]), int(m["difficulty"]), int(m["seed"]), image_size)
