"""How the actor is asked to solve a problem: image first, then the question and the answer format
that `solution.parse_reasoning` and `scoring.extract_answer` read back."""

from __future__ import annotations

from typing import Any

from mmc_ray.engine_protocol import GenerationRequest
from mmc_ray.tasks.problem import Problem, choices_text

SOLVE_INSTRUCTION = (
    "Solve the problem step by step. Write each step on its own line as 'Step k: ...', "
    "then give the final answer on a last line as 'Answer: ...'."
)


def solve_messages(problem: Problem) -> tuple[dict[str, Any], ...]:
    """Chat messages asking the actor to solve `problem` (one image part if it has an image)."""
    question = problem.question
    if problem.choices and "(A)" not in question and "choices:" not in question.lower():
        question = f"{question}\nChoices: {choices_text(problem.choices)}"
    content: list[dict[str, Any]] = [{"type": "image"}] if problem.image is not None else []
    content.append({"type": "text", "text": f"{question}\n{SOLVE_INSTRUCTION}"})
    return ({"role": "user", "content": content},)


def solve_request(problem: Problem, *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                  seed: int | None, assistant_prefix: str = "",
                  stop: tuple[str, ...] = ()) -> GenerationRequest:
    """The actor's request to solve `problem` (continuing `assistant_prefix` if given). The
    problem id travels in metadata for tracing and for the simulated actor."""
    return GenerationRequest(
        messages=solve_messages(problem),
        images=problem.images,
        assistant_prefix=assistant_prefix,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        stop=stop,
        seed=seed,
        metadata={"problem_id": problem.problem_id},
    )
