"""Critic metrics as the process-supervision literature reports them. Pure Python.

* **ProcessBench F1** (Qwen's ProcessBench, `code/run_eval.py`): each solution's label is its earliest
  wrong step, or −1 for a correct solution; a critic's prediction is the step it flags, or −1 when it
  judges the solution correct (an unparsed critique predicts nothing and matches no label).
  acc_err = exact-step accuracy on erroneous solutions, acc_cor = share of correct solutions judged
  correct, F1 = 2·acc_err·acc_cor / (acc_err + acc_cor). Steps are numbered from 1 here (ProcessBench
  counts from 0): only equality is compared, so the figure is the same.
* **Step macro-F1** (VisualProcessBench): every step labelled 1 (correct), −1 (incorrect) or 0
  (neutral, left out); the mean of the F1 on correct steps and the F1 on incorrect steps. A step with
  no prediction (after the step a critique flags, or in an unparsed critique) is a miss for its class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

T = TypeVar("T")

CORRECT_LABEL = -1  # ProcessBench's label of a solution with no wrong step


@dataclass(frozen=True)
class Judged:
    """One solution: its label (earliest wrong step, or −1) and the critic's prediction (the same,
    or None when the critique could not be read)."""

    label: int
    predicted: int | None
    group: str = ""  # a family or data source, reported on its own


def _mean(values: Sequence[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def _by_group(items: Iterable[T], group: Callable[[T], str]) -> dict[str, list[T]]:
    """`items` split by their group, groups in sorted order."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(group(item), []).append(item)
    return dict(sorted(groups.items()))


@dataclass(frozen=True)
class ProcessBenchScore:
    """acc_err, acc_cor and their harmonic mean `f1` (None where a side has no solution; 0 when
    either is 0), over `erroneous` + `correct` solutions."""

    acc_err: float | None
    acc_cor: float | None
    f1: float | None
    erroneous: int
    correct: int


def processbench_f1(judged: Iterable[Judged]) -> ProcessBenchScore:
    judged = list(judged)
    erroneous = [j.predicted == j.label for j in judged if j.label != CORRECT_LABEL]
    correct = [j.predicted == CORRECT_LABEL for j in judged if j.label == CORRECT_LABEL]
    acc_err, acc_cor = _mean(erroneous), _mean(correct)
    if acc_err is None or acc_cor is None:
        f1 = None
    else:
        f1 = 2 * acc_err * acc_cor / (acc_err + acc_cor) if acc_err + acc_cor else 0.0
    return ProcessBenchScore(acc_err, acc_cor, f1, len(erroneous), len(correct))


@dataclass(frozen=True)
class ProcessBenchReport:
    """`processbench_f1` over everything (`overall`), per group, and the mean of the groups' F1
    (ProcessBench reports the average over its subsets)."""

    overall: ProcessBenchScore
    groups: dict[str, ProcessBenchScore]
    mean_group_f1: float | None

    def to_json(self) -> dict[str, Any]:
        """As report.json holds it: the overall figures at the top level."""
        return {**asdict(self.overall), "groups": {g: asdict(s) for g, s in self.groups.items()},
                "mean_group_f1": self.mean_group_f1}


def processbench_report(judged: Iterable[Judged]) -> ProcessBenchReport:
    judged = list(judged)
    per_group = {g: processbench_f1(items) for g, items in _by_group(judged, lambda j: j.group).items()}
    f1s = [s.f1 for s in per_group.values() if s.f1 is not None]
    return ProcessBenchReport(processbench_f1(judged), per_group, sum(f1s) / len(f1s) if f1s else None)


def prediction_from_verdict(verdict: str | None, first_wrong_step: int | None) -> int | None:
    """A parsed critique as a ProcessBench prediction: −1 for "correct", the flagged step for
    "incorrect", None when it was not parsed (or flags no step)."""
    if verdict == "correct":
        return CORRECT_LABEL
    if verdict == "incorrect" and first_wrong_step is not None:
        return first_wrong_step
    return None


def step_predictions_from_critique(n_steps: int, verdict: str | None,
                                   first_wrong_step: int | None) -> list[int | None]:
    """Per-step predictions a critique makes: every step sound for "correct"; for "incorrect" the
    steps before the flagged one sound, the flagged one wrong, the rest unjudged; nothing unparsed."""
    if verdict == "correct":
        return [1] * n_steps
    if verdict != "incorrect" or first_wrong_step is None or not 1 <= first_wrong_step <= n_steps:
        return [None] * n_steps
    k = first_wrong_step
    return [1] * (k - 1) + [-1] + [None] * (n_steps - k)


def step_predictions_from_scores(p_sound: Sequence[float], threshold: float = 0.5) -> list[int]:
    """Per-step predictions from step soundness probabilities (`/v1/score_steps`)."""
    return [1 if p >= threshold else -1 for p in p_sound]


StepLabels = tuple[Sequence[int], Sequence[int | None]]


@dataclass(frozen=True)
class StepF1:
    """F1 on correct steps, on incorrect steps, their mean (None unless both are defined), over
    `steps` judged steps."""

    f1_correct_steps: float | None
    f1_wrong_steps: float | None
    macro_f1: float | None
    steps: int


def step_macro_f1(steps: Iterable[StepLabels]) -> StepF1:
    """Macro-F1 over (labels, predictions) per solution; neutral (0) steps are left out."""
    counts = {c: {"tp": 0, "fp": 0, "fn": 0} for c in (1, -1)}
    judged_steps = 0
    for labels, predicted in steps:
        if len(labels) != len(predicted):
            raise ValueError(f"{len(labels)} step labels but {len(predicted)} predictions")
        for label, guess in zip(labels, predicted, strict=True):
            if label == 0:
                continue
            judged_steps += 1
            for c, n in counts.items():
                n["tp"] += label == c and guess == c
                n["fp"] += label != c and guess == c
                n["fn"] += label == c and guess != c
    f1 = {c: (2 * n["tp"] / (2 * n["tp"] + n["fp"] + n["fn"]) if n["tp"] + n["fp"] + n["fn"] else None)
          for c, n in counts.items()}
    defined = [v for v in f1.values() if v is not None]
    return StepF1(f1[1], f1[-1], sum(defined) / len(defined) if len(defined) == 2 else None, judged_steps)


@dataclass(frozen=True)
class StepF1Report:
    overall: StepF1
    groups: dict[str, StepF1]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.overall), "groups": {g: asdict(f) for g, f in self.groups.items()}}


def step_macro_f1_by_group(rows: Iterable[Mapping[str, object]]) -> StepF1Report:
    """`step_macro_f1` over rows with `labels`, `predicted` and `group`, overall and per group."""
    rows = list(rows)

    def pairs(items):
        return [(r["labels"], r["predicted"]) for r in items]

    return StepF1Report(step_macro_f1(pairs(rows)), {g: step_macro_f1(pairs(items)) for g, items
                                                     in _by_group(rows, lambda r: str(r["group"])).items()})


@dataclass(frozen=True)
class CriticBenchReport:
    """A critic's figures on step-labelled solutions (`critic_bench_report`)."""

    solutions: int
    parse_rate: float | None
    verdict_accuracy: float | None
    processbench: ProcessBenchReport
    step_macro_f1_from_critiques: StepF1Report
    step_macro_f1_from_scores: StepF1Report | None  # None when the critic gave no step scores
    scored_solutions: int

    def to_json(self) -> dict[str, Any]:
        """As report.json holds it."""
        scores = self.step_macro_f1_from_scores
        return {"solutions": self.solutions, "parse_rate": self.parse_rate,
                "verdict_accuracy": self.verdict_accuracy, "processbench": self.processbench.to_json(),
                "step_macro_f1_from_critiques": self.step_macro_f1_from_critiques.to_json(),
                "step_macro_f1_from_scores": scores.to_json() if scores else None,
                "scored_solutions": self.scored_solutions}


def critic_bench_report(rows: Sequence[Mapping[str, object]]) -> CriticBenchReport:
    """The figures of a critic on step-labelled solutions, from rows with `labels`, `label` (the
    earliest wrong step or -1), `source`, the parsed `verdict` / `first_wrong_step` (None when the
    critique did not parse) and `step_sound` (None when the critic gave no step scores). Verdict
    accuracy counts an unparsed critique as wrong; a solution is correct when no step is wrong."""
    judged = [Judged(r["label"], prediction_from_verdict(r["verdict"], r["first_wrong_step"]), r["source"])
              for r in rows]
    from_critiques = [{"labels": r["labels"], "group": r["source"],
                       "predicted": step_predictions_from_critique(len(r["labels"]), r["verdict"],
                                                                   r["first_wrong_step"])} for r in rows]
    scored = [r for r in rows if r["step_sound"] is not None]
    from_scores = [{"labels": r["labels"], "group": r["source"],
                    "predicted": step_predictions_from_scores(r["step_sound"])} for r in scored]
    truth = ["correct" if r["label"] == CORRECT_LABEL else "incorrect" for r in rows]
    return CriticBenchReport(
        solutions=len(rows), parse_rate=_mean([r["verdict"] is not None for r in rows]),
        verdict_accuracy=_mean([r["verdict"] == t for r, t in zip(rows, truth, strict=True)]),
        processbench=processbench_report(judged),
        step_macro_f1_from_critiques=step_macro_f1_by_group(from_critiques),
        step_macro_f1_from_scores=step_macro_f1_by_group(from_scores) if scored else None,
        scored_solutions=len(scored))
