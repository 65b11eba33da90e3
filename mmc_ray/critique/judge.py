"""A critic's judgement of MMC dataset rows (CRITIQUE_SCHEMA: a path, its verdict, its first wrong
step), as the rows `eval.metrics.critic_metrics` scores. Pure: the engine is passed in.

`text_only` asks without the image, the baseline that shows whether a critic uses what it sees."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mmc_ray.critique.prompts import critic_messages
from mmc_ray.critique.schema import parse_critique
from mmc_ray.generation import GenerationRequest, GenerationResult
from mmc_ray.tasks.problem import Problem


class Generates(Protocol):
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


def judge_rows(critic: Generates, rows: Sequence[Mapping[str, Any]], max_new_tokens: int = 160,
               text_only: bool = False) -> list[dict[str, Any]]:
    """One greedy critique per row, with the row's truth (`correct`, `true_first_wrong_step`) beside
    the critic's text, verdict and first wrong step (None where it does not parse)."""
    problems = [Problem.from_row(dict(r, image=None) if text_only else dict(r)) for r in rows]
    requests = [GenerationRequest(messages=critic_messages(p, r["path_steps"], r["path_answer"]),
                                  images=p.images, max_new_tokens=max_new_tokens, temperature=0.0,
                                  metadata={"problem_id": p.problem_id})
                for p, r in zip(problems, rows, strict=True)]
    judged = []
    for row, result in zip(rows, critic.generate(requests), strict=True):
        completion = result.completions[0]
        parsed = parse_critique(completion.text, len(row["path_steps"]))
        critique = parsed.critique
        judged.append({
            "correct": row["verdict"] == "correct",
            "true_first_wrong_step": row["first_wrong_step"] if row["verdict"] == "incorrect" else None,
            "critic_text": completion.text,
            "critic_parse_error": completion.error or parsed.error,
            "critic_verdict": critique.verdict if critique else None,
            "critic_first_wrong_step": critique.first_wrong_step if critique else None,
        })
    return judged
