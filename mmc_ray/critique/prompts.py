"""Prompts for the three roles around a critique: the annotator (writes one from a correct and a
wrong path), the critic (writes one from a single path) and the actor (revises given one).

Steps are always shown renumbered from 1 with the final answer on its own line, so the step
numbers in a critique refer to exactly what the reader saw."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmc_ray.critique.records import PathToCritique
from mmc_ray.critique.schema import ERROR_TYPES
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.prompts import solve_messages
from mmc_ray.tasks.solution import parse_reasoning, strip_step_prefix

FORMAT_SPEC = (
    "Reply in exactly this format:\n"
    "Verdict: correct or incorrect\n"
    "First wrong step: <number of the first wrong step; omit if correct>\n"
    f"Error type: <one of {', '.join(ERROR_TYPES)}; omit if correct>\n"
    "Explanation: <what is wrong in that step and why>\n"
    "Correction: <how to fix that step>"
)


def numbered(steps: Sequence[str], answer: str | None) -> str:
    """Steps as "Step k: ..." lines from 1, then the answer line (or a note that there is none)."""
    lines = [f"Step {i}: {strip_step_prefix(s)}" for i, s in enumerate(steps, start=1)]
    lines.append(f"Answer: {answer}" if answer is not None else "(no final answer given)")
    return "\n".join(lines)


def _with_image(problem: Problem, text: str) -> tuple[dict[str, Any], ...]:
    return _user_turn(problem.image is not None, text)


def _user_turn(has_image: bool, text: str) -> tuple[dict[str, Any], ...]:
    content: list[dict[str, Any]] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": text})
    return ({"role": "user", "content": content},)


_SOLUTION_START = "\n\nProposed solution:\n"
_SOLUTION_END = "\n\nCheck each step against the image"


def critic_messages(problem: Problem, steps: Sequence[str], answer: str | None) -> tuple[dict[str, Any], ...]:
    """Ask the critic to check one solution step by step."""
    return critic_turn(problem.question, problem.image is not None, steps, answer)


def critic_turn(question: str, has_image: bool, steps: Sequence[str],
                answer: str | None) -> tuple[dict[str, Any], ...]:
    """`critic_messages` for a bare question (the served critic gets no `Problem`)."""
    return _user_turn(has_image, (
        f"Question: {question}{_SOLUTION_START}{numbered(steps, answer)}{_SOLUTION_END} and the "
        "arithmetic. Find the first wrong step, if any.\n" + FORMAT_SPEC
    ))


def solution_in_critic_prompt(prompt: str) -> tuple[tuple[str, ...], str | None]:
    """The (steps, answer) a `critic_messages` prompt shows; ValueError if it is not one."""
    start, end = prompt.find(_SOLUTION_START), prompt.rfind(_SOLUTION_END)
    if start < 0 or end < start:
        raise ValueError("not a critic prompt: no 'Proposed solution:' section")
    parsed = parse_reasoning(prompt[start + len(_SOLUTION_START):end])
    return parsed.steps, parsed.answer


def annotator_messages(problem: Problem, shared: Sequence[str], correct: Sequence[str],
                       correct_answer: str | None, wrong: Sequence[str],
                       wrong_answer: str | None) -> tuple[dict[str, Any], ...]:
    """Ask the annotator to critique the wrong path, given a correct path from the same prefix."""
    n = len(shared)
    return _with_image(problem, (
        f"Question: {problem.question}\n\n"
        f"Two solutions share their first {n} step{'s' if n != 1 else ''} and then diverge. "
        f"Solution A reaches the right answer; solution B does not.\n\n"
        f"Solution A:\n{numbered([*shared, *correct], correct_answer)}\n\n"
        f"Solution B:\n{numbered([*shared, *wrong], wrong_answer)}\n\n"
        "Critique solution B: find its first wrong step (numbered as in solution B), say why it is "
        "wrong and how to fix it. Use solution A and the image as evidence.\n" + FORMAT_SPEC
    ))


def annotation_messages(item: PathToCritique) -> tuple[dict[str, Any], ...]:
    """What an LLM annotator is shown for one path: the annotator prompt when a right answer stands
    beside it (a divergent pair's sibling, a refinement answer's correct partner), else the critic
    prompt. A model trained as an annotator (`train.task=annotator`) learns on exactly these."""
    if item.kind != "divergent" and item.reference_answer is None:
        return critic_messages(item.problem, item.path_steps, item.path_answer)
    shared = len(item.shared_steps)
    return annotator_messages(item.problem, item.shared_steps, item.reference_steps[shared:],
                              item.reference_answer, item.path_steps[shared:], item.path_answer)


def refine_messages(problem: Problem, reasoning: str, critique_text: str) -> tuple[dict[str, Any], ...]:
    """The actor's solve turn, its previous answer, and the critique: revise from the flagged step."""
    return (
        *solve_messages(problem),
        {"role": "assistant", "content": reasoning},
        {"role": "user", "content": (
            f"A reviewer checked your solution:\n{critique_text}\n\n"
            "Revise your solution: keep the steps before the flagged step, fix that step, and continue "
            "in the same format, ending with 'Answer: ...'."
        )},
    )
