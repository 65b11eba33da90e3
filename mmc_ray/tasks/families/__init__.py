"""Synthetic verifiable visual task families.

Each family module exposes `make(rng, difficulty) -> TaskInstance`: it draws an image with PIL and
writes the question together with its ground-truth solution program (`SolutionStep`s). Everything
comes from the passed `random.Random`, so a (seed, difficulty) pair always yields the same task,
which is what lets `generator.problem_from_id` rebuild a problem from its id alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from mmc_ray.tasks.problem import choices_text
from mmc_ray.tasks.solution import OBSERVE_OPS, SolutionStep, execute

DIFFICULTIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class TaskInstance:
    """One generated task before it becomes a `Problem` (the image is still a PIL image)."""

    question: str
    image: Image.Image
    steps: tuple[SolutionStep, ...]
    answer: str
    answer_type: str
    choices: tuple[str, ...] = ()
    # What the image shows, as (name, value) pairs named like the observation steps' labels: every
    # value any question about this image could need, from what the renderer drew (not only what
    # this question asks). The dense supervision a model that reads its images is built from.
    facts: tuple[tuple[str, str], ...] = ()
    # Where each fact is drawn: (name, boxes in render pixels: left, top, right, bottom), every fact
    # named (a zero count has no box). What a model reading fact `name` should look at.
    regions: tuple[tuple[str, tuple[tuple[float, float, float, float], ...]], ...] = ()
    # What a fact's value is composed of, as (name, value) pairs no question asks for: a bar's
    # gridline and the axis's step between gridlines (value = gridline x step), each bar's label by
    # position. A vision tower trained to read them too reads the values far better (bench/RESULTS.md).
    cues: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # A family bug that makes the stated answer disagree with its own program must fail loudly
        # here rather than become silently wrong training data.
        derived = execute(self.steps)[-1]
        if derived != self.answer:
            raise ValueError(f"answer {self.answer!r} differs from its steps' result {derived!r}")
        if self.answer_type == "choice" and self.answer not in self.choices:
            raise ValueError(f"answer {self.answer!r} is not among the choices {self.choices}")
        shown = dict(self.facts)
        for step in self.steps:
            if step.op in OBSERVE_OPS and shown.get(step.label) != step.value:
                raise ValueError(f"step {step.label!r} observes {step.value!r} but the facts say "
                                 f"{shown.get(step.label)!r}")


def check_difficulty(difficulty: int) -> int:
    """`difficulty` if it is one of DIFFICULTIES, else ValueError."""
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be an integer in 1..5, got {difficulty!r}")
    return difficulty


def with_choices(question: str, choices: Sequence[str]) -> str:
    """A multiple-choice question ending with its "(A) x (B) y" options."""
    return f"{question} {choices_text(choices)}"


def join_words(words: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


# Imported last: the family modules import TaskInstance and the helpers above from this package.
from mmc_ray.tasks.families import arithmetic, bar_chart, counting, geometry  # noqa: E402

FAMILIES: dict[str, Callable[[random.Random, int], TaskInstance]] = {
    "counting": counting.make,
    "bar_chart": bar_chart.make,
    "arithmetic": arithmetic.make,
    "geometry": geometry.make,
}
# family -> the sentence observing one of its facts by name, `{value}` left open (the steps' own)
OBSERVATION_TEMPLATES: dict[str, Callable[[str], str]] = {
    "counting": counting.observation_template,
    "bar_chart": bar_chart.observation_template,
    "arithmetic": arithmetic.observation_template,
    "geometry": geometry.observation_template,
}
