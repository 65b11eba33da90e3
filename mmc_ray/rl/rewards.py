"""Rewards for a critic's critique, after Critique-RL (arXiv 2510.24320; its released reward code), and
a step-level reward only data with a labelled first wrong step can give.

Stage I, discriminability: the verdict against the truth, +1 on a match, -1 on a mismatch or when
there is no verdict (an unparseable critique).

Stage II, helpfulness: the frozen actor revises its answer with the critique; the reward is read from
the answer's correctness before and after (`REFINE_REWARDS`):
- `refine`:  1 when the revised answer is correct, else 0;
- `delta`:   W→C +1, C→W -1, else 0;
- `correct`: W→C 1, C→C 0.2, else 0.
With `with_verdict`, a right verdict adds 0.2 and a wrong (or missing) one makes the reward a flat -1.

Step level (ours): on a path whose first wrong step is known, naming that step earns 1, naming an
earlier one `early_credit` (a revision from there still reaches the error), a later one
`late_credit` (the error stays: a revision keeps what comes before the flagged step); a correct
path's reward is the stage I one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mmc_ray.critique.schema import Critique

RefineReward = Literal["refine", "delta", "correct"]
REFINE_REWARDS: dict[str, dict[tuple[bool, bool], float]] = {  # (correct before, correct after) → reward
    "refine": {(False, False): 0.0, (False, True): 1.0, (True, False): 0.0, (True, True): 1.0},
    "delta": {(False, False): 0.0, (False, True): 1.0, (True, False): -1.0, (True, True): 0.0},
    "correct": {(False, False): 0.0, (False, True): 1.0, (True, False): 0.0, (True, True): 0.2},
}
VERDICT_BONUS = 0.2  # stage II's discrimination term for a right verdict


def verdict_right(critique: Critique | None, correct: bool) -> bool:
    """Whether the critique's verdict is the truth; no critique (unparseable) is never right."""
    return critique is not None and (critique.verdict == "correct") == correct


def verdict_reward(critique: Critique | None, correct: bool) -> float:
    """Stage I: +1 for the right verdict, -1 for a wrong or missing one."""
    return 1.0 if verdict_right(critique, correct) else -1.0


def refine_reward(kind: RefineReward, correct_before: bool, correct_after: bool,
                  critique: Critique | None = None, with_verdict: bool = False) -> float:
    """Stage II: the reward of one revision outcome (`critique` needed `with_verdict`)."""
    if kind not in REFINE_REWARDS:
        raise ValueError(f"refine reward {kind!r}: one of {sorted(REFINE_REWARDS)}")
    reward = REFINE_REWARDS[kind][(correct_before, correct_after)]
    if not with_verdict:
        return reward
    return reward + VERDICT_BONUS if verdict_right(critique, correct_before) else -1.0


@dataclass(frozen=True)
class StepCredit:
    """What naming a step other than the first wrong one earns (exact: 1, wrong verdict: -1)."""

    early_credit: float = 0.5
    late_credit: float = 0.0

    def __post_init__(self) -> None:
        for name in ("early_credit", "late_credit"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [-1, 1], got {getattr(self, name)}")


def step_reward(critique: Critique | None, first_wrong_step: int | None,
                credit: StepCredit = StepCredit()) -> float:
    """The step-level reward of a critique of a path whose first wrong step (1-based) is
    `first_wrong_step`, None for a correct path."""
    if first_wrong_step is None or not verdict_right(critique, correct=False):
        return verdict_reward(critique, correct=first_wrong_step is None)
    flagged = critique.first_wrong_step
    if flagged == first_wrong_step:
        return 1.0
    return credit.early_credit if flagged < first_wrong_step else credit.late_credit
