"""The actor-critic refinement loop, batched over many problems at once.

Round 0: the actor answers. Every round: the critic critiques the current answer; a "correct"
verdict stops the loop for that problem; otherwise the actor revises with the critique in its
prompt, until `max_rounds` revisions are spent. Each round is one engine call per role for all the
problems still active, so a worker pool or a batching server sees full batches.

Mitigations against feedback friction (models that ignore or repeat after feedback), each a
config switch: a temperature per round (`temperatures`), rejecting a revision whose answer was
already tried for the problem (`reject_repeats`: `revision_samples` samples, the first untried one
wins), and, when the budget ends without a "correct" verdict, returning the answer the critic rated
best rather than the last one (`keep_best`).

The critic's output is data: it is parsed by `parse_critique`; an unparseable critique stops the
loop for that problem with the reason recorded, and the actor revises from the parsed critique's
canonical text, never from raw model output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mmc_ray.config import RefineConfig
from mmc_ray.critique.prompts import critic_messages, refine_messages
from mmc_ray.critique.rule_annotator import locate_first_error
from mmc_ray.critique.schema import Critique, parse_critique
from mmc_ray.engine_protocol import Completion, GenerationEngine, GenerationRequest
from mmc_ray.refine.records import RefineRecord
from mmc_ray.seeding import stable_seed
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.prompts import solve_request
from mmc_ray.tasks.scoring import ScoreResult, answers_match, score_text
from mmc_ray.tasks.solution import parse_reasoning

STOP_CORRECT = "critic verdict correct"
STOP_BUDGET = "round budget spent"
STOP_UNPARSEABLE = "critic output unparseable"
STOP_ACTOR_ERROR = "actor error"
STOP_CRITIC_ERROR = "critic error"


def round_seed(base_seed: int, problem_id: str, round_index: int, role: str) -> int:
    """Sampling seed per (problem, round, role): results do not depend on batch composition."""
    return stable_seed(base_seed, problem_id, round_index, role)


@dataclass
class _Attempt:
    """One round of one problem; becomes a REFINE_SCHEMA row."""

    round: int
    text: str
    steps: tuple[str, ...]
    answer: str | None
    correct: bool
    true_first_wrong_step: int | None
    temperature: float
    answer_repeated: bool
    actor_finish_reason: str
    actor_tokens: int
    critic_text: str = ""
    critique: Critique | None = None
    critic_parse_error: str = ""
    critic_tokens: int = 0

    def critic_rating(self) -> tuple[int, float, int]:
        """Higher is better: a "correct" verdict, then more steps before the flagged one; later
        rounds win ties (they were written with more feedback)."""
        if self.critique is None:
            return (-1, 0.0, self.round)
        if self.critique.verdict == "correct":
            return (1, 1.0, self.round)
        return (0, (self.critique.first_wrong_step - 1) / max(1, len(self.steps)), self.round)


@dataclass
class _ProblemState:
    problem: Problem
    attempts: list[_Attempt] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def active(self) -> bool:
        return not self.stop_reason

    def tried(self, answer: str | None) -> bool:
        p = self.problem
        return answer is not None and any(
            answers_match(answer, a.answer, p.answer_type, p.choices) for a in self.attempts
            if a.answer is not None)


class RefinementLoop:
    """Runs the loop for batches of problems with two engines (local, a Ray worker pool, or an
    OpenAI-compatible server: anything with the `GenerationEngine` interface)."""

    def __init__(self, actor: GenerationEngine, critic: GenerationEngine, cfg: RefineConfig) -> None:
        self.actor = actor
        self.critic = critic
        self.cfg = cfg

    def run(self, problems: Sequence[Problem]) -> list[RefineRecord]:
        """One record per round each problem went through."""
        states = [_ProblemState(p) for p in problems]
        for round_index in range(self.cfg.max_rounds + 1):
            active = [s for s in states if s.active]
            if not active:
                break
            self._actor_round(active, round_index)
            self._critic_round([s for s in active if s.active], round_index)
        return [record for s in states for record in self._records(s)]

    def _actor_round(self, states: Sequence[_ProblemState], round_index: int) -> None:
        cfg = self.cfg
        temperature = cfg.temperature(round_index)
        requests = []
        for s in states:
            seed = round_seed(cfg.seed, s.problem.problem_id, round_index, "actor")
            if round_index == 0:
                requests.append(solve_request(s.problem, n=1, temperature=temperature, top_p=1.0,
                                              max_new_tokens=cfg.actor_max_new_tokens, seed=seed))
                continue
            last = s.attempts[-1]
            requests.append(GenerationRequest(
                messages=refine_messages(s.problem, last.text, last.critique.to_text()),
                images=s.problem.images,
                n=cfg.revision_samples if cfg.reject_repeats else 1,
                temperature=temperature, max_new_tokens=cfg.actor_max_new_tokens, seed=seed,
                metadata={"problem_id": s.problem.problem_id},
            ))
        for s, result in zip(states, self.actor.generate(requests), strict=True):
            usable = [c for c in result.completions if c.finish_reason != "error"]
            if not usable:
                s.stop_reason = f"{STOP_ACTOR_ERROR}: {result.completions[0].error or 'no completion'}"
                if not s.attempts:  # keep a row for the problem: an error is a result, not a loss
                    failed = result.completions[0]
                    s.attempts.append(self._attempt(s.problem, 0, failed, score_text(failed.text, s.problem),
                                                    temperature, repeated=False, tokens=0))
                continue
            scored = [(c, score_text(c.text, s.problem)) for c in usable]
            chosen = next(((c, score) for c, score in scored if not s.tried(score.extracted)), None)
            completion, score = chosen or scored[0]
            s.attempts.append(self._attempt(s.problem, round_index, completion, score, temperature,
                                            repeated=round_index > 0 and chosen is None,
                                            tokens=sum(c.completion_tokens for c in result.completions)))

    @staticmethod
    def _attempt(problem: Problem, round_index: int, completion: Completion, score: ScoreResult,
                 temperature: float, repeated: bool, tokens: int) -> _Attempt:
        parsed = parse_reasoning(completion.text)
        error = locate_first_error(problem.steps, parsed.steps) if problem.steps else None
        true_step = error.index + 1 if error is not None else None
        return _Attempt(round_index, completion.text, parsed.steps, score.extracted, score.correct,
                        true_step, temperature, repeated, completion.finish_reason, tokens)

    def _critic_round(self, states: Sequence[_ProblemState], round_index: int) -> None:
        cfg = self.cfg
        requests = [
            GenerationRequest(
                messages=critic_messages(s.problem, a.steps, a.answer),
                images=s.problem.images,
                temperature=cfg.critic_temperature, max_new_tokens=cfg.critic_max_new_tokens,
                seed=round_seed(cfg.seed, s.problem.problem_id, round_index, "critic"),
                metadata={"problem_id": s.problem.problem_id},
            )
            for s in states for a in [s.attempts[-1]]
        ]
        for s, result in zip(states, self.critic.generate(requests), strict=True):
            attempt, completion = s.attempts[-1], result.completions[0]
            attempt.critic_text, attempt.critic_tokens = completion.text, completion.completion_tokens
            if completion.finish_reason == "error":
                attempt.critic_parse_error = completion.error or "engine error"
                s.stop_reason = f"{STOP_CRITIC_ERROR}: {attempt.critic_parse_error}"
                continue
            # A solution with no step lines is one step as far as the critic is concerned.
            parsed = parse_critique(completion.text, num_steps=max(1, len(attempt.steps)))
            attempt.critique, attempt.critic_parse_error = parsed.critique, parsed.error
            if not parsed.ok:
                s.stop_reason = STOP_UNPARSEABLE
            elif parsed.critique.verdict == "correct":
                s.stop_reason = STOP_CORRECT
            elif round_index == cfg.max_rounds:
                s.stop_reason = STOP_BUDGET

    def _final_round(self, s: _ProblemState) -> int | None:
        if not s.attempts:
            return None
        if self.cfg.keep_best and s.stop_reason != STOP_CORRECT:
            return max(s.attempts, key=_Attempt.critic_rating).round
        return s.attempts[-1].round

    def _records(self, s: _ProblemState) -> list[RefineRecord]:
        p, final = s.problem, self._final_round(s)
        return [RefineRecord(
            problem_id=p.problem_id, round=a.round, family=p.family, source=p.source, text=a.text,
            num_steps=len(a.steps), extracted_answer=a.answer, correct=a.correct,
            true_first_wrong_step=a.true_first_wrong_step, temperature=a.temperature,
            answer_repeated=a.answer_repeated, actor_finish_reason=a.actor_finish_reason,
            actor_tokens=a.actor_tokens, critic_text=a.critic_text,
            critic_verdict=a.critique.verdict if a.critique else None,
            critic_first_wrong_step=a.critique.first_wrong_step if a.critique else None,
            critic_error_type=a.critique.error_type if a.critique else None,
            critic_parse_error=a.critic_parse_error, critic_tokens=a.critic_tokens, final=a.round == final,
            stop_reason=s.stop_reason if a is s.attempts[-1] else "",
        ) for a in s.attempts]
