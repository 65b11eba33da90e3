"""The model-free `mc` annotator: critiques from the search's own value estimates, for data without
step programs (as Math-Shepherd and OmegaPRM label process supervision).

A step's node value is the share of correct rollouts below it (`MinedPath.step_values`). On a wrong
path, the first step whose value falls to `low_value` or below is where the solution stopped being
recoverable: the first wrong step. The critique says so with a templated explanation citing the
values, error type `other` (values say where, not what kind). Deterministic (the wording is seeded by
the pair id), no model call, any scale. Its blind spots: a step is judged by where rollouts from it
end, so a lucky wrong step on a right path is judged correct, and a wrong path whose values never
fall (a rollout's own steps carry no value) gets no critique (a counted drop).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mmc_ray.critique.schema import Critique

EXPLANATIONS = (
    "From step {k} on, rollouts of this solution reach the right answer only {value} of the time{before}: "
    "step {k} is where it goes wrong.",
    "Step {k} is the first step the search could not recover from: continuations after it end right "
    "{value} of the time{before}.",
    "The solution goes wrong at step {k}. Rollouts from that step reach the correct answer {value} of "
    "the time{before}.",
)
BEFORE = (", against {previous} after step {p}", " (after step {p} it was still {previous})")
CORRECTIONS = (
    "Redo step {k}; paths that take a different step {k} reach the right answer more often.",
    "Reconsider step {k} and continue from a corrected version of it.",
)
CORRECTIONS_FROM_SIBLING = (
    "Take a different step {k}, as a path that reaches the right answer does: \"{step}\"",
    "Replace step {k} with the step a correct path takes here: \"{step}\"",
)
SOUND = (
    "Every step keeps the solution on track: rollouts from each of them reach the right answer "
    "(at least {lowest} of the time).",
    "No step loses the way: from each one, the search's rollouts end right {lowest} of the time or more.",
)


def _share(value: float) -> str:
    return f"{value:.0%}"


def first_low_step(step_values: Sequence[float | None], low_value: float) -> int | None:
    """The 1-based number of the first step whose value is `low_value` or below; None if none is."""
    return next((i + 1 for i, v in enumerate(step_values) if v is not None and v <= low_value), None)


def mc_critique(steps: Sequence[str], step_values: Sequence[float | None], correct: bool, low_value: float,
                key: str, sibling_steps: Sequence[str] = ()) -> Critique | str:
    """A critique of one path from its step values, or the reason none can be written (a counted
    drop). `sibling_steps`: a correct path that split from this one, whose step at the flagged
    position the correction may quote."""
    if len(step_values) != len(steps):
        return f"{len(steps)} steps but {len(step_values)} step values: not a path mined from a tree"
    rng = random.Random(key)
    known = [v for v in step_values if v is not None]
    if correct:
        if not known:
            return "no step of the path is a tree node: no value to judge it by"
        return Critique("correct", rng.choice(SOUND).format(lowest=_share(min(known))))
    k = first_low_step(step_values, low_value)
    if k is None:
        return f"no step's value falls to low_value ({low_value:g}) or below"
    previous = step_values[k - 2] if k >= 2 else None
    before = "" if previous is None else rng.choice(BEFORE).format(previous=_share(previous), p=k - 1)
    explanation = rng.choice(EXPLANATIONS).format(k=k, value=_share(step_values[k - 1]), before=before)
    same_start = len(sibling_steps) >= k and list(sibling_steps[: k - 1]) == list(steps[: k - 1])
    if same_start and sibling_steps[k - 1] != steps[k - 1]:
        correction = rng.choice(CORRECTIONS_FROM_SIBLING).format(k=k, step=sibling_steps[k - 1])
    else:
        correction = rng.choice(CORRECTIONS).format(k=k)
    return Critique("incorrect", explanation, k, "other", correction)
