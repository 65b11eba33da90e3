"""Best-of-N with the critic as a verifier: the actor samples N answers to each problem and the critic
scores every one (`BEST_OF_N_SCHEMA` rows; `eval.best_of_n` picks and reports accuracy vs N).

A critic that scores continuations (`ScoresContinuations`: the HF engine) is used as a process reward
model: its likelihoods of "Verdict: correct" and of each "First wrong step: k" give `p_correct` and
each step's soundness (`critique.step_scores`), with no text generated. Any other critic (a worker pool,
a server, the oracle) writes a greedy critique, and its verdict is the score: `p_correct` 1 for
"correct", else 0, steps before the flagged one sound. A sample the actor failed on is kept with
score 0, so every problem has exactly N samples and every N is measured on the same draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmc_ray.config import RefineConfig
from mmc_ray.critique.prompts import critic_messages
from mmc_ray.critique.schema import Critique, parse_critique
from mmc_ray.critique.step_scores import outcome_openings, step_scores
from mmc_ray.engine_protocol import Completion, GenerationEngine, GenerationRequest, ScoresContinuations
from mmc_ray.seeding import stable_seed
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.prompts import solve_request
from mmc_ray.tasks.scoring import score_text
from mmc_ray.tasks.solution import parse_reasoning


def _verdict_scores(critique: Critique | None, num_steps: int) -> tuple[float, list[float]]:
    if critique is None:
        return 0.0, []
    if critique.verdict == "correct":
        return 1.0, [1.0] * num_steps
    flagged = critique.first_wrong_step
    return 0.0, [float(i < flagged) for i in range(1, num_steps + 1)]


def _likelihood_verdict(p_correct: float, first_wrong: Sequence[float]) -> tuple[str, int | None]:
    """The critic's most likely opening: correct, or the first wrong step it finds likeliest."""
    if not first_wrong or p_correct >= max(first_wrong):
        return "correct", None
    return "incorrect", max(range(len(first_wrong)), key=first_wrong.__getitem__) + 1


def sample_and_verify(problems: Sequence[Problem], actor: GenerationEngine, critic: GenerationEngine,
                      cfg: RefineConfig) -> list[dict[str, Any]]:
    """`max(cfg.best_of_n)` answers per problem, each with the critic's scores: BEST_OF_N_SCHEMA rows."""
    n = max(cfg.best_of_n)
    requests = [solve_request(p, n=n, temperature=cfg.best_of_n_temperature, top_p=1.0,
                              max_new_tokens=cfg.actor_max_new_tokens,
                              seed=stable_seed(cfg.seed, p.problem_id, "best-of-n"))
                for p in problems]
    samples: list[tuple[Problem, int, Completion]] = []
    for problem, result in zip(problems, actor.generate(requests), strict=True):
        completions = list(result.completions)[:n]
        # An actor error answers with one errored completion: every missing sample is an error too.
        missing = completions[-1] if completions and completions[-1].finish_reason == "error" else \
            Completion("", "error", 0, error=f"the actor returned {len(completions)} of {n} samples")
        completions += [missing] * (n - len(completions))
        samples += [(problem, k, c) for k, c in enumerate(completions)]
    rows = [_row(problem, k, c) for problem, k, c in samples]
    judged = [(row, problem) for row, (problem, _, c) in zip(rows, samples, strict=True)
              if c.finish_reason != "error"]
    requests = [GenerationRequest(messages=critic_messages(problem, row["steps"], row["extracted_answer"]),
                                  images=problem.images, temperature=0.0,
                                  max_new_tokens=cfg.critic_max_new_tokens,
                                  metadata={"problem_id": problem.problem_id})
                for row, problem in judged]
    if isinstance(critic, ScoresContinuations):
        for (row, _), request in zip(judged, requests, strict=True):
            scores = step_scores(critic.score(request, outcome_openings(max(1, len(row["steps"])))))
            verdict, step = _likelihood_verdict(scores.p_correct, scores.first_wrong_step)
            row.update(scored_by="likelihood", p_correct=scores.p_correct, step_sound=list(scores.step_sound),
                       critic_verdict=verdict, critic_first_wrong_step=step)
    else:
        for (row, _), result in zip(judged, critic.generate(requests), strict=True):
            completion = result.completions[0]
            if completion.finish_reason == "error":
                continue  # scored_by stays "error": the critic said nothing about this answer
            critique = parse_critique(completion.text, num_steps=max(1, len(row["steps"]))).critique
            p_correct, sound = _verdict_scores(critique, max(1, len(row["steps"])))
            row.update(scored_by="verdict", p_correct=p_correct, step_sound=sound,
                       critic_verdict=critique.verdict if critique else None,
                       critic_first_wrong_step=critique.first_wrong_step if critique else None)
    for row in rows:
        del row["steps"]
    return rows


def _row(problem: Problem, sample: int, completion: Completion) -> dict[str, Any]:
    score = score_text(completion.text, problem)
    steps = parse_reasoning(completion.text).steps
    return {"problem_id": problem.problem_id, "sample": sample, "family": problem.family,
            "source": problem.source, "text": completion.text, "num_steps": len(steps), "steps": steps,
            "extracted_answer": score.extracted,
            "correct": score.correct and completion.finish_reason != "error",
            "actor_finish_reason": completion.finish_reason, "critic_verdict": None,
            "critic_first_wrong_step": None, "scored_by": "error", "p_correct": 0.0, "step_sound": []}
