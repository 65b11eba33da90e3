"""Evaluation of refinement records (REFINE_SCHEMA rows), pure Python.

* accuracy: single pass (round 0), after each round (a problem that stopped keeps its final
  answer), and final (the answer the loop returned, which `keep_best` may take from an earlier round);
* transitions between the single-pass and the final answer: wrong→right and right→wrong;
* the critic as a judge of every answer it critiqued: verdict accuracy (an unparseable critique
  counts as wrong) and parse rate. A solution is truly "correct" when its answer is right and, where
  ground-truth steps exist, none of its steps is wrong (what the critic is trained to judge);
* the critic as a step-error detector, against the ground-truth first wrong step (synthetic tasks):
  a prediction is the step of an "incorrect" verdict; it is a true positive when it names the true
  first wrong step. precision = TP / predictions, recall = TP / solutions with a known wrong step.
  Wrong answers whose wrong step is unknown (benchmark rows; every step right but the final line)
  are left out of the step metrics and counted;
* ProcessBench F1 over the same solutions (eval/processbench.py): exact first-wrong-step accuracy on
  the erroneous ones, "correct" verdicts on the sound ones, and their harmonic mean.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mmc_ray.eval.processbench import CORRECT_LABEL, Judged, prediction_from_verdict, processbench_f1

Row = Mapping[str, Any]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    """None only when both are undefined; no predictions at all against known errors scores 0."""
    if precision is None and recall is None:
        return None
    if not precision or not recall:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class CriticMetrics:
    """The critic as a judge and a step-error detector (module docstring)."""

    critiques: int
    parse_rate: float | None
    verdict_accuracy: float | None
    step_precision: float | None
    step_recall: float | None
    step_f1: float | None
    processbench_f1: float | None
    processbench_acc_err: float | None
    processbench_acc_cor: float | None
    step_unknown_wrong_answers: int


@dataclass(frozen=True)
class AnswerMetrics:
    """Accuracy of the actor's answers before, during and after refinement."""

    problems: int
    single_pass_accuracy: float | None
    accuracy_by_round: list[float | None]
    final_accuracy: float | None
    wrong_to_right: int
    right_to_wrong: int
    mean_rounds: float | None

    @property
    def refine_gain(self) -> float | None:
        """Final accuracy minus single pass: what refinement added."""
        if self.final_accuracy is None or self.single_pass_accuracy is None:
            return None
        return self.final_accuracy - self.single_pass_accuracy


@dataclass(frozen=True)
class FamilyMetrics(AnswerMetrics):
    critic: CriticMetrics


@dataclass(frozen=True)
class RefinementMetrics(FamilyMetrics):
    """Everything `evaluate` measures: the answers and the critic overall, per family, why the loop
    stopped and what it cost. `as_dict()` is report.json's layout."""

    stop_reasons: dict[str, int]
    repeated_answers: int
    actor_tokens: int
    critic_tokens: int
    families: dict[str, FamilyMetrics]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def group_by_problem(rows: Iterable[Row]) -> dict[str, list[Row]]:
    """Rounds of each problem, in round order; raises on a duplicate (problem, round)."""
    problems: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        problems[row["problem_id"]].append(row)
    for problem_id, rounds in problems.items():
        rounds.sort(key=lambda r: r["round"])
        numbers = [r["round"] for r in rounds]
        if numbers != list(range(len(numbers))):
            raise ValueError(f"problem {problem_id}: rounds {numbers} are not 0..{len(numbers) - 1}")
        if sum(bool(r["final"]) for r in rounds) != 1:
            raise ValueError(f"problem {problem_id}: expected exactly one final round")
    return dict(problems)


def _answer_metrics(problems: Sequence[list[Row]], max_round: int) -> dict[str, Any]:
    """AnswerMetrics' fields."""
    n = len(problems)
    first = [rounds[0]["correct"] for rounds in problems]
    final_rows = [next(r for r in rounds if r["final"]) for rounds in problems]
    final = [row["correct"] for row in final_rows]
    by_round = [
        _ratio(sum((rounds[k] if k < len(rounds) else final_row)["correct"]
                   for rounds, final_row in zip(problems, final_rows, strict=True)), n)
        for k in range(max_round + 1)
    ]
    return {
        "problems": n,
        "single_pass_accuracy": _ratio(sum(first), n),
        "accuracy_by_round": by_round,
        "final_accuracy": _ratio(sum(final), n),
        "wrong_to_right": sum(not a and b for a, b in zip(first, final, strict=True)),
        "right_to_wrong": sum(a and not b for a, b in zip(first, final, strict=True)),
        "mean_rounds": _ratio(sum(len(rounds) - 1 for rounds in problems), n),
    }


def _sound(row: Row) -> bool:
    return bool(row["correct"]) and row["true_first_wrong_step"] is None


def critic_metrics(rows: Sequence[Row]) -> CriticMetrics:
    """The critic as a judge and a step-error detector (module docstring), over critiqued rows."""
    judged = [r for r in rows if r["critic_text"] or r["critic_parse_error"]]
    parsed = [r for r in judged if r["critic_verdict"] is not None]
    verdict_right = sum(r["critic_verdict"] == ("correct" if _sound(r) else "incorrect") for r in parsed)
    known = [r for r in judged if _sound(r) or r["true_first_wrong_step"] is not None]
    predicted = [r for r in known if r["critic_verdict"] == "incorrect"]
    true_positive = sum(r["critic_first_wrong_step"] == r["true_first_wrong_step"] for r in predicted)
    precision = _ratio(true_positive, len(predicted))
    recall = _ratio(true_positive, sum(r["true_first_wrong_step"] is not None for r in known))
    processbench = processbench_f1(
        Judged(CORRECT_LABEL if _sound(r) else r["true_first_wrong_step"],
               prediction_from_verdict(r["critic_verdict"], r["critic_first_wrong_step"])) for r in known)
    return CriticMetrics(
        critiques=len(judged), parse_rate=_ratio(len(parsed), len(judged)),
        verdict_accuracy=_ratio(verdict_right, len(judged)), step_precision=precision, step_recall=recall,
        step_f1=_f1(precision, recall), processbench_f1=processbench.f1,
        processbench_acc_err=processbench.acc_err, processbench_acc_cor=processbench.acc_cor,
        step_unknown_wrong_answers=len(judged) - len(known))


def evaluate(rows: Iterable[Row]) -> RefinementMetrics:
    """All metrics, overall and per family, plus stop reasons and token totals."""
    rows = list(rows)
    problems = group_by_problem(rows)
    max_round = max((len(r) - 1 for r in problems.values()), default=0)
    families: dict[str, list[list[Row]]] = defaultdict(list)
    for rounds in problems.values():
        families[rounds[0]["family"]].append(rounds)
    return RefinementMetrics(
        **_answer_metrics(list(problems.values()), max_round), critic=critic_metrics(rows),
        stop_reasons=dict(Counter(r[-1]["stop_reason"] for r in problems.values()).most_common()),
        repeated_answers=sum(bool(r["answer_repeated"]) for r in rows),
        actor_tokens=sum(r["actor_tokens"] or 0 for r in rows),
        critic_tokens=sum(r["critic_tokens"] or 0 for r in rows),
        families={family: FamilyMetrics(**_answer_metrics(group, max_round),
                                        critic=critic_metrics([r for rounds in group for r in rounds]))
                  for family, group in sorted(families.items())})


def frequency_baselines(train: Sequence[Row], test: Sequence[Row]) -> dict[str, Any]:
    """What a critic answering from label frequencies alone (learned on `train`, MMC dataset rows)
    scores on `test`: always the majority verdict, always the most common first wrong step, and
    ProcessBench F1 of the one constant answer that pairs them."""
    majority = Counter(r["verdict"] for r in train).most_common(1)[0][0]
    wrong_steps = Counter(r["first_wrong_step"] for r in train if r["verdict"] == "incorrect")
    common_step = wrong_steps.most_common(1)[0][0] if wrong_steps else None
    wrong = [r for r in test if r["verdict"] == "incorrect"]
    constant = prediction_from_verdict(majority, common_step)
    judged = [Judged(prediction_from_verdict(r["verdict"], r["first_wrong_step"]), constant) for r in test]
    return {"majority_verdict": majority,
            "majority_verdict_accuracy": _ratio(sum(r["verdict"] == majority for r in test), len(test)),
            "most_common_step": common_step,
            "most_common_step_accuracy": _ratio(sum(r["first_wrong_step"] == common_step for r in wrong),
                                                len(wrong)),
            "constant_processbench_f1": processbench_f1(judged).f1}
