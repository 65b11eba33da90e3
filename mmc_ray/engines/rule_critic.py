"""`RuleCriticEngine`: answers critic prompts about synthetic tasks with the rule annotator, i.e.
from the ground-truth step program. It is the oracle critic: refinement with it shows what the loop
can gain with a perfect judge, the bound a trained critic is measured against. Like the simulated
actor it reads the problem from `request.metadata["problem_id"]` (a synthetic id)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mmc_ray.config import EngineConfig
from mmc_ray.critique.prompts import solution_in_critic_prompt
from mmc_ray.critique.rule_annotator import rule_critique
from mmc_ray.critique.schema import Critique
from mmc_ray.engine_protocol import (
    Completion,
    GenerationRequest,
    GenerationResult,
    error_result,
    message_text,
)
from mmc_ray.engines.simulated import approx_tokens
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.scoring import answers_match
from mmc_ray.tasks.synthetic import problem_from_id


class RuleCriticEngine:
    name = "rule-critic"

    def __init__(self, problem_lookup: Callable[[str], Problem] = problem_from_id) -> None:
        self._problem = problem_lookup

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> RuleCriticEngine:
        """Synthetic problems by id, or those of `cfg.problems` (the user's file)."""
        if not cfg.problems:
            return cls()
        from mmc_ray.tasks.benchmark import load_problem_file

        by_id = {p.problem_id: p for p in load_problem_file(cfg.problems)}
        return cls(problem_lookup=by_id.__getitem__)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [self._critique(req) for req in requests]

    def _critique(self, req: GenerationRequest) -> GenerationResult:
        try:
            problem = self._problem(req.metadata.get("problem_id", ""))
            steps, answer = solution_in_critic_prompt(message_text(req.messages[-1]))
        except (KeyError, ValueError) as e:
            error = f"rule critic needs a critic prompt about a synthetic problem: {e}"
            return error_result(req.n, error)
        critique = rule_critique(problem, steps, answer, key=req.metadata.get("problem_id", ""))
        if isinstance(critique, str):
            # Every aligned step is right, yet the rule annotator cannot write a step critique
            # (missing or wrong answer line, extra steps): judge the answer itself.
            if answers_match(answer, problem.answer, problem.answer_type, problem.choices):
                critique = Critique("correct", "The final answer follows from correct steps.")
            else:
                critique = Critique("incorrect", f"The steps do not end in the right answer: {critique}.",
                                    max(1, len(steps)), "incomplete" if answer is None else "reasoning")
        text = critique.to_text()
        return GenerationResult((Completion(text, "stop", approx_tokens(text)),) * req.n, 0)
