"""Per-step soundness from a critic's own likelihoods, so the critic can serve as a process reward
model without any text parsing.

The critic is asked to critique a solution of n steps. Its possible openings are mutually exclusive:
"Verdict: correct" or "Verdict: incorrect / First wrong step: k" for k = 1..n (each ends with a
newline, so "1" is not a prefix of "10"). Their log-probabilities, normalised over these n + 1
outcomes, give P(correct) and P(first wrong step = k); step i is sound when the first wrong step
comes after it: P(sound_i) = P(correct) + sum_{k > i} P(first wrong = k).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mmc_ray.critique.schema import Critique


def outcome_openings(num_steps: int) -> list[str]:
    """The n + 1 openings, in the critic's trained format: correct first, then step 1..n."""
    if num_steps < 1:
        raise ValueError("a solution to score needs at least one step")
    def opening(critique: Critique, lines: int) -> str:
        return "\n".join(critique.to_text().split("\n")[:lines]) + "\n"

    return [opening(Critique("correct", "-"), 1),
            *(opening(Critique("incorrect", "-", k, "other"), 2) for k in range(1, num_steps + 1))]


@dataclass(frozen=True)
class StepScores:
    p_correct: float
    first_wrong_step: tuple[float, ...]  # P(first wrong step = k), k = 1..n
    step_sound: tuple[float, ...]        # P(step i is sound), i = 1..n


def step_scores(logprobs: Sequence[float]) -> StepScores:
    """From the log-probabilities of `outcome_openings(n)` (same order)."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    probs = [w / total for w in weights]
    p_correct, wrong = probs[0], probs[1:]
    sound = tuple(p_correct + sum(wrong[i + 1:]) for i in range(len(wrong)))
    return StepScores(p_correct, tuple(wrong), sound)
