"""Best-of-N with the critic as a verifier, and majority vote beside it. Pure Python.

The actor samples N answers to a problem; the critic scores each (`p_correct`, the probability it
judges the whole answer correct, or the minimum of its per-step soundness, as process reward models
are used); the answer with the best score is kept. Majority vote keeps the most frequent final
answer. Accuracy against N is measured on prefixes of one set of samples (the first 1, 2, 4, 8), so
every N sees the same draws, as MM-PRM and VisualPRM report it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

PickBy = Literal["p_correct", "min_step"]


@dataclass(frozen=True)
class Candidate:
    answer: str | None
    correct: bool
    p_correct: float
    step_sound: tuple[float, ...] = ()

    def score(self, by: PickBy) -> float:
        if by == "p_correct":
            return self.p_correct
        return min(self.step_sound) if self.step_sound else self.p_correct


def pick_best(candidates: Sequence[Candidate], by: PickBy = "p_correct") -> int:
    """Index of the best-scored candidate (the first of equals: the sampling order breaks ties)."""
    if not candidates:
        raise ValueError("best-of-N needs at least one candidate")
    return max(range(len(candidates)), key=lambda i: (candidates[i].score(by), -i))


def majority_vote(candidates: Sequence[Candidate]) -> int:
    """Index of the first candidate with the most frequent answer (unanswered ones vote for nothing;
    when none answered, the first candidate)."""
    if not candidates:
        raise ValueError("majority vote needs at least one candidate")
    counts = Counter(c.answer for c in candidates if c.answer is not None)
    if not counts:
        return 0
    top = max(counts.values())
    return next(i for i, c in enumerate(candidates) if c.answer is not None and counts[c.answer] == top)


def accuracy_vs_n(problems: Sequence[Sequence[Candidate]], ns: Sequence[int] = (1, 2, 4, 8),
                  by: PickBy = "p_correct") -> dict[str, list[float | int]]:
    """Accuracy of best-of-N and of majority vote for each N, on the first N samples of each problem
    (problems with fewer samples than N are an error: the figure would mix sample counts)."""
    if not problems:
        raise ValueError("no problems")
    short = min(len(p) for p in problems)
    if max(ns) > short:
        raise ValueError(f"N up to {max(ns)} needs that many samples per problem; the fewest is {short}")
    best, vote, oracle = [], [], []
    for n in ns:
        best.append(sum(p[pick_best(p[:n], by)].correct for p in problems) / len(problems))
        vote.append(sum(p[majority_vote(p[:n])].correct for p in problems) / len(problems))
        oracle.append(sum(any(c.correct for c in p[:n]) for p in problems) / len(problems))
    return {"n": list(ns), "best_of_n": best, "majority_vote": vote, "any_correct": oracle}
