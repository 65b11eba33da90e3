"""The rule annotator: critiques of synthetic-task paths from the ground-truth step program.

Each written step is aligned with the ground-truth step of the same index and the value it states
is compared with the true value. Every step before the first mismatch agrees with the ground truth,
so the first mismatch is the first error; its kind follows from the step's operation (a count,
a reading, a measurement, arithmetic with the right or the wrong operation, a conclusion). The
critique text is varied (seeded by the pair id) so the critic learns the content, not a template.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mmc_ray.critique.schema import Critique
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.solution import (
    LABEL_OPS,
    NUMERIC_OPS,
    SolutionStep,
    apply_op,
    execute,
    reference_step_texts,
    same_value,
    stated_value,
    strip_step_prefix,
)

OBSERVATION_ERROR = {"count": "counting", "read_bar": "misreading", "read_number": "misreading",
                     "measure": "measurement"}
OP_WORDS = {"add": "addition", "sub": "subtraction", "mul": "multiplication", "sum": "a sum",
            "diff": "the difference", "max": "the maximum", "min": "the minimum"}

EXPLANATIONS = {
    "counting": (
        "Step {k} counts {stated} {label}, but the image shows {expected}.",
        "In step {k} the count of {label} is off: there are {expected}, not {stated}.",
        "Step {k} miscounts the {label}; the image has {expected} of them, not {stated}.",
    ),
    "misreading": (
        "Step {k} reads {label} as {stated}, but the image shows {expected}.",
        "The value taken for {label} in step {k} is wrong: it is {expected} in the image, not {stated}.",
        "Step {k} misreads {label}: the image gives {expected}, while the solution uses {stated}.",
    ),
    "measurement": (
        "Step {k} measures {label} as {stated}, but on the grid it is {expected}.",
        "The measurement of {label} in step {k} is off: it is {expected}, not {stated}.",
    ),
    "calculation": (
        "Step {k} makes an arithmetic slip: the operation gives {expected}, not {stated}.",
        "The arithmetic in step {k} is wrong; computing it again gives {expected} instead of {stated}.",
        "Step {k} has the right operation but the wrong result: {expected}, not {stated}.",
    ),
    "wrong_operation": (
        "Step {k} combines the values with the wrong operation; the question needs {op_word}, "
        "which gives {expected}, not {stated}.",
        "In step {k} the solution applies the wrong operation. Using {op_word} gives {expected}.",
    ),
    "reasoning": (
        "Step {k} concludes {stated}, but the values found before it point to {expected}.",
        "The conclusion in step {k} does not follow: comparing the values gives {expected}, not {stated}.",
    ),
}
CORRECTIONS = {
    "counting": ("Recount the {label} carefully: there are {expected}.",
                 "Count the {label} again one by one; the right count is {expected}."),
    "misreading": ("Read {label} again against the image: the value is {expected}.",
                   "Look at {label} once more; it shows {expected}."),
    "measurement": ("Measure {label} again using the grid: it is {expected}.",),
    "calculation": ("Redo the arithmetic of step {k}: the result is {expected}.",
                    "Recompute step {k} carefully to get {expected}."),
    "wrong_operation": ("Use {op_word} in step {k}, which gives {expected}.",),
    "reasoning": ("Compare the values again: the answer to this step is {expected}.",),
}
FOLLOW_UPS = ("", " Every later step must be recomputed from the corrected value.",
              " The steps after it inherit the error.")
SOUND = ("Every step matches the image and the arithmetic is right.",
         "The solution reads the image correctly and each computation checks out.",
         "All values are read correctly and every step follows from the previous ones.")


@dataclass(frozen=True)
class FirstError:
    index: int  # 0-based step index
    error_type: str
    stated: str
    expected: str


def locate_first_error(truth: Sequence[SolutionStep], steps: Sequence[str]) -> FirstError | None:
    """The first written step whose stated value differs from the ground truth, or None when every
    aligned step agrees."""
    expected_values = execute(truth)
    stated_values: list[str] = []
    for i, (step, text) in enumerate(zip(truth, steps, strict=False)):
        stated = stated_value(step, text)
        if not same_value(stated, expected_values[i]):
            return FirstError(i, _classify(step, stated, stated_values, truth), stated or "nothing",
                              expected_values[i])
        stated_values.append(stated)
    return None


def _classify(step: SolutionStep, stated: str | None, earlier: Sequence[str],
              truth: Sequence[SolutionStep]) -> str:
    if step.op in OBSERVATION_ERROR:
        return OBSERVATION_ERROR[step.op]
    if step.op in LABEL_OPS:
        return "reasoning"
    inputs = [earlier[j] for j in step.inputs]
    labels = [truth[j].label for j in step.inputs]
    for other in NUMERIC_OPS - {step.op}:
        try:
            if same_value(stated, apply_op(other, inputs, labels)):
                return "wrong_operation"
        except (ValueError, IndexError, ZeroDivisionError):
            continue
    return "calculation"


def reference_first_wrong_step(problem: Problem, steps: Sequence[str]) -> int | None:
    """An independent, strict check of the annotator: the first step (1-based) whose text is not
    exactly the reference solution's text for that step; None if all match."""
    reference = reference_step_texts(problem.steps)
    for i, text in enumerate(steps):
        if i >= len(reference) or strip_step_prefix(text) != reference[i]:
            return i + 1
    return None if len(steps) >= len(reference) else len(steps) + 1


def rule_critique(problem: Problem, steps: Sequence[str], answer: str | None, key: str) -> Critique | str:
    """A critique of one path, or the reason none can be written (a counted drop)."""
    if not problem.steps:
        return "no ground-truth steps (the rule annotator works on synthetic tasks only)"
    rng = random.Random(key)
    error = locate_first_error(problem.steps, steps)
    if error is None:
        if len(steps) != len(problem.steps):
            return f"path has {len(steps)} steps, ground truth {len(problem.steps)}: cannot align"
        if answer is not None and not same_value(answer, problem.answer):
            return "every step is right but the final answer line is not"
        if answer is None:
            return "every step is right but there is no final answer"
        return Critique("correct", rng.choice(SOUND))
    truth = problem.steps[error.index]
    label = f"bar {truth.label}" if truth.op == "read_bar" else truth.label or "the value"
    fields = {"k": error.index + 1, "label": label, "stated": error.stated,
              "expected": error.expected, "op_word": OP_WORDS.get(truth.op, truth.op)}
    explanation = rng.choice(EXPLANATIONS[error.error_type]).format(**fields)
    correction = rng.choice(CORRECTIONS[error.error_type]).format(**fields) + rng.choice(FOLLOW_UPS)
    return Critique("incorrect", explanation, error.index + 1, error.error_type, correction)
