"""Best-of-N with the critic as a verifier, and majority vote beside it. Pure Python.

The actor samples N answers to a problem; the critic scores each (`p_correct`, the probability it
judges the whole answer correct, or the minimum of its per-step soundness, as process reward models
are used); the answer with the best score is kept. Majority vote keeps the most frequent final
answer. Accuracy against N is measured on prefixes of one set of samples (the first 1, 2, 4, 8), so
every N sees the same draws, as MM-PRM and VisualPRM report it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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


@dataclass(frozen=True)
class BestOfNMetrics:
    """Accuracy for each N in `n`: best-of-N picked by P(correct) and by the minimum step soundness,
    majority vote, the any-correct bound; `gain` is best-of-max(N) by P(correct) over one sample."""

    problems: int
    n: list[int]
    best_of_n_p_correct: list[float]
    best_of_n_min_step: list[float]
    majority_vote: list[float]
    any_correct: list[float]
    gain: float
    scored_by: dict[str, int]


def best_of_n_metrics(rows: Sequence[Mapping[str, Any]], ns: Sequence[int]) -> BestOfNMetrics:
    """Accuracy vs N from BEST_OF_N_SCHEMA rows: picked by `p_correct` and by the minimum step
    soundness, beside majority vote and the any-correct bound; the gain is best-of-max(N) by
    `p_correct` over one sample."""
    by_problem: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_problem.setdefault(row["problem_id"], []).append(row)
    problems = [[Candidate(r["extracted_answer"], bool(r["correct"]), r["p_correct"],
                           tuple(r["step_sound"] or ())) for r in sorted(samples, key=lambda r: r["sample"])]
                for samples in by_problem.values()]
    by_p = accuracy_vs_n(problems, ns, by="p_correct")
    by_step = accuracy_vs_n(problems, ns, by="min_step")
    return BestOfNMetrics(problems=len(problems), n=by_p["n"], best_of_n_p_correct=by_p["best_of_n"],
                          best_of_n_min_step=by_step["best_of_n"], majority_vote=by_p["majority_vote"],
                          any_correct=by_p["any_correct"], gain=by_p["best_of_n"][-1] - by_p["best_of_n"][0],
                          scored_by=dict(Counter(r["scored_by"] for r in rows)))


def sample_counts(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """1, 2, 4, ... up to the fewest samples any problem has, that count included."""
    per_problem = Counter(r["problem_id"] for r in rows)
    fewest = min(per_problem.values())
    return sorted({*(1 << k for k in range(fewest.bit_length()) if 1 << k <= fewest), fewest})
