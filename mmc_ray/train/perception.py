"""How well a VLM reads its images: teacher-forced on held-out reference solutions, the share of
observation steps ("there are 5", "its value is 12", "it is 7 units") whose value tokens the model
predicts every one of, per family, beside always answering the most common value of that family's
observation; and the share of the values the solutions compute from them predicted right. Used by
the recipe that teaches the tiny VLM to see (its model card's figures) and by
`bench/perception_probe.py`."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.solution import OBSERVE_OPS, STEP_PREFIX, SolutionStep, render_step
from mmc_ray.train.collate import collate_packed
from mmc_ray.train.examples import TrainExample

CommonValues = dict[tuple[str, str], str]
VALUE_MARK = "\x00"  # stands in for a step's value to find where its template writes it


def most_common_values(problems: Sequence[Problem]) -> CommonValues:
    """Per (family, observation op), the value the training problems observe most often."""
    counts: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for problem in problems:
        for step in problem.steps:
            if step.op in OBSERVE_OPS:
                counts[(problem.family, step.op)][step.value] += 1
    return {key: c.most_common(1)[0][0] for key, c in counts.items()}


def step_value_tokens(problem: Problem, example: TrainExample,
                      tokenizer: Any) -> list[tuple[SolutionStep, list[int]]]:
    """(step, positions in `example` of the tokens spelling its value) per step of the problem's
    reference solution, which `example` must end with."""
    reference = problem.reference_solution
    values = [step.value for step in problem.steps]
    spans, line_start = [], 0
    for index, (step, line) in enumerate(zip(problem.steps, reference.split("\n"), strict=False)):
        inputs = [values[j] for j in step.inputs]
        written = STEP_PREFIX.format(index=index + 1) + render_step(step, VALUE_MARK, inputs)
        at = line_start + written.index(VALUE_MARK)
        if reference[at:at + len(step.value)] != step.value:
            raise ValueError(f"{problem.problem_id}: step {index + 1}'s value is not where its template "
                             "puts it")
        spans.append((at, at + len(step.value)))
        line_start += len(line) + 1
    return list(zip(problem.steps, span_tokens(example, reference, spans, tokenizer), strict=False))


def computes_a_number(step: SolutionStep) -> bool:
    """A step that works a number out (a sum, a product), not one that reads it or picks a label."""
    return step.op not in OBSERVE_OPS and any(c.isdigit() for c in step.value)


def observed_value_tokens(problem: Problem, example: TrainExample,
                          tokenizer: Any) -> list[tuple[SolutionStep, list[int]]]:
    """`step_value_tokens` of the observation steps (the values read off the image)."""
    return [(step, positions) for step, positions in step_value_tokens(problem, example, tokenizer)
            if step.op in OBSERVE_OPS]


def span_tokens(example: TrainExample, target: str, spans: Sequence[tuple[int, int]],
                tokenizer: Any) -> list[list[int]]:
    """Positions in `example` (which must end with `target` and the end-of-turn token) of the tokens
    covering each character span of `target`."""
    encoded = tokenizer(target + tokenizer.eos_token, add_special_tokens=False, return_offsets_mapping=True)
    start = len(example) - len(encoded["input_ids"])
    if example.input_ids[start:] != encoded["input_ids"]:
        raise ValueError(f"{example.example_id}: the example does not end with its target text")
    return [[start + j for j, (lo, hi) in enumerate(encoded["offset_mapping"]) if lo < end and hi > begin]
            for begin, end in spans]


def read_accuracy(vlm: Any, held_out: Sequence[tuple[Problem, TrainExample]],
                  common: CommonValues) -> dict[str, dict[str, float]]:
    """Per family: `read_accuracy` (teacher-forced, every token of an observed value right), the
    `most_common_value` baseline's, how many `values` were read; and `compute_accuracy` of the values
    the solution computes from them (the arithmetic), over `computed` values (None when none)."""
    import torch

    model = vlm.model.eval()
    hits: dict[str, list[bool]] = collections.defaultdict(list)
    computed: dict[str, list[bool]] = collections.defaultdict(list)
    base: dict[str, list[bool]] = collections.defaultdict(list)
    with torch.no_grad():
        for problem, example in held_out:
            batch = collate_packed([example], model, vlm.image_token_id)
            batch.pop("labels")
            predicted = model(**batch).logits[0].argmax(-1).tolist()
            for step, positions in step_value_tokens(problem, example, vlm.tokenizer):
                right = all(predicted[p - 1] == example.input_ids[p] for p in positions)
                if step.op in OBSERVE_OPS:
                    hits[problem.family].append(right)
                    base[problem.family].append(common.get((problem.family, step.op)) == step.value)
                elif computes_a_number(step):
                    computed[problem.family].append(right)
    return {family: {"read_accuracy": sum(v) / len(v), "most_common_value": sum(base[family]) / len(v),
                     "values": len(v), "compute_accuracy": _share(computed[family]),
                     "computed": len(computed[family])}
            for family, v in sorted(hits.items())}


def _share(hits: Sequence[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None
