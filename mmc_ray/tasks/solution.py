"""Ground-truth solutions as tiny step programs, and the text format reasoning is written in.

A solution is a list of `SolutionStep`s. Observation steps (`count`, `read_bar`, `read_number`,
`measure`) read a value off the image; operation steps combine earlier steps' values. Because each
step says how its value is computed, a solution can be re-executed with different observations
(the simulated actor does this to propagate its own mistakes) and checked (the tests re-derive
every answer from its steps).

The reasoning text format, shared by the simulator, prompts and parsers:

    Step 1: Count the red circles: there are 3.
    Step 2: Count the blue squares: there are 2.
    Step 3: Add the counts: 3 + 2 = 5.
    Answer: 5
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

OBSERVE_OPS = frozenset({"count", "read_bar", "read_number", "measure"})
NUMERIC_OPS = frozenset({"add", "sub", "mul", "sum", "diff", "max", "min"})
LABEL_OPS = frozenset({"argmax", "argmin"})
ALL_OPS = OBSERVE_OPS | NUMERIC_OPS | LABEL_OPS

STEP_PREFIX = "Step {index}: "
ANSWER_PREFIX = "Answer: "
_STEP_LINE = re.compile(r"^\s*Step\s+(\d+)\s*[:.)]\s*(.*)$", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^\s*(?:final\s+)?answer\s*[:：]\s*(.*)$", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class SolutionStep:
    """One step of a ground-truth solution.

    `template` is formatted with the input steps' values as positional fields, `value=` the step's
    own value and `plus=` the input values joined by " + " (for sums of many terms).
    `label` names what the step is about ("AB", "bar March"); `argmax`/`argmin` return the label of
    the winning input step.
    """

    op: str
    template: str
    value: str
    inputs: tuple[int, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        if self.op not in ALL_OPS:
            raise ValueError(f"unknown step op {self.op!r}; allowed: {sorted(ALL_OPS)}")
        if self.op in OBSERVE_OPS and self.inputs:
            raise ValueError(f"observation step {self.op!r} takes no inputs, got {self.inputs}")
        if self.op not in OBSERVE_OPS and not self.inputs:
            raise ValueError(f"operation step {self.op!r} needs inputs")


@dataclass(frozen=True)
class ParsedReasoning:
    """Reasoning text split into its steps (without the "Step k:" prefix) and final answer."""

    steps: tuple[str, ...]
    answer: str | None
    extra: tuple[str, ...] = field(default=())  # lines that were neither a step nor the answer


def format_number(x: float) -> str:
    """Canonical text of a number: integers without a decimal point, others to two decimals."""
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x}")
    if abs(x - round(x)) < 1e-9:
        return str(round(x))
    return f"{x:.2f}".rstrip("0").rstrip(".")


def apply_op(op: str, values: Sequence[str], labels: Sequence[str]) -> str:
    """Compute an operation step's value from its inputs' values (and labels, for argmax/argmin)."""
    if op in OBSERVE_OPS:
        raise ValueError(f"{op!r} is an observation; its value comes from the image")
    nums = [float(v) for v in values]
    if op in ("add", "sum"):
        return format_number(sum(nums))
    if op == "sub":
        return format_number(nums[0] - sum(nums[1:]))
    if op == "mul":
        return format_number(math.prod(nums))
    if op == "diff":
        return format_number(abs(nums[0] - nums[1]))
    if op == "max":
        return format_number(max(nums))
    if op == "min":
        return format_number(min(nums))
    if op in LABEL_OPS:
        pick = max if op == "argmax" else min
        return labels[pick(range(len(nums)), key=nums.__getitem__)]
    raise ValueError(f"unknown op {op!r}")


def execute(steps: Sequence[SolutionStep], observed: dict[int, str] | None = None) -> list[str]:
    """Re-run a solution, taking observation values from `observed` where given, and return every
    step's value. With no overrides this re-derives the ground truth."""
    observed = observed or {}
    values: list[str] = []
    for i, step in enumerate(steps):
        if step.op in OBSERVE_OPS:
            values.append(observed.get(i, step.value))
            continue
        if any(j >= i for j in step.inputs):
            raise ValueError(f"step {i} reads a later step: inputs {step.inputs}")
        values.append(
            apply_op(step.op, [values[j] for j in step.inputs], [steps[j].label for j in step.inputs])
        )
    return values


def render_step(step: SolutionStep, value: str, input_values: Sequence[str]) -> str:
    """The text of one step (without the "Step k:" prefix)."""
    return step.template.format(*input_values, value=value, plus=" + ".join(input_values))


def render_reasoning(step_texts: Sequence[str], answer: str) -> str:
    """Numbered steps followed by the answer line, in the format every engine is asked to write."""
    lines = [STEP_PREFIX.format(index=i + 1) + text for i, text in enumerate(step_texts)]
    lines.append(ANSWER_PREFIX + answer)
    return "\n".join(lines)


def reference_step_texts(steps: Sequence[SolutionStep]) -> list[str]:
    """The text of every ground-truth step (without "Step k:" prefixes)."""
    values = execute(steps)
    return [render_step(s, values[i], [values[j] for j in s.inputs]) for i, s in enumerate(steps)]


def solution_text(steps: Sequence[SolutionStep]) -> str:
    """The ground-truth reasoning, rendered."""
    return render_reasoning(reference_step_texts(steps), execute(steps)[-1])


def strip_step_prefix(step: str) -> str:
    """A step's text without its "Step k:" numbering."""
    m = _STEP_LINE.match(step)
    return m.group(2).strip() if m else step.strip()


def parse_reasoning(text: str) -> ParsedReasoning:
    """Split model reasoning into steps and answer. Tolerant: a step may span several lines, lines
    before the first step are kept as `extra`; the last "Answer:" line wins."""
    steps: list[str] = []
    extra: list[str] = []
    answer: str | None = None
    for line in text.splitlines():
        if m := _ANSWER_LINE.match(line):
            answer = m.group(1).strip()
        elif m := _STEP_LINE.match(line):
            steps.append(m.group(2).strip())
        elif line.strip():
            if steps and answer is None:
                steps[-1] = f"{steps[-1]} {line.strip()}"
            else:
                extra.append(line.strip())
    return ParsedReasoning(steps=tuple(steps), answer=answer, extra=tuple(extra))


def _template_pattern(template: str) -> re.Pattern[str]:
    escaped = re.escape(template).replace(re.escape("{value}"), "(?P<value>.+?)")
    escaped = re.sub(r"\\\{(?:\d+|plus)\\\}", ".+?", escaped)
    return re.compile(rf"^{escaped}\s*$")


def stated_value(step: SolutionStep, text: str) -> str | None:
    """The value a written step states for ground-truth `step`: read by the step's template, else
    the last number (or, for argmax/argmin, a candidate label) in it; None if there is none."""
    text = _STEP_LINE.sub(r"\2", text).strip()
    if m := _template_pattern(step.template).match(text):
        return m.group("value").strip()
    if step.op in LABEL_OPS:
        words = text.replace(".", " ").split()
        return next((w for w in reversed(words) if w in step.label.split()), None)
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def same_value(a: str | None, b: str | None) -> bool:
    """Equal as numbers (within 1e-6) or, for labels, as text."""
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return a.strip().lower() == b.strip().lower()
