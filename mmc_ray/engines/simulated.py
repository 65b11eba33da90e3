"""`SimulatedActorEngine`: a seeded noisy solver of the synthetic tasks, for demos and tests only.

It is not a model. It writes step-by-step reasoning in the same format a model is asked for, makes
realistic step errors at configured rates (miscount by one, misread bar, misread digit, mis-measured
length, arithmetic slip, wrong operation) and carries each mistake forward into later steps, so
search, annotation, training and refinement see data with real structure. It reads the problem from
`request.metadata["problem_id"]` (a synthetic id, regenerated deterministically) and continues any
`assistant_prefix` from where it stops. Given a feedback turn naming a wrong step ("step 3"), it
revises from that step and fixes it with probability `revise_success_rate`.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from functools import lru_cache

from mmc_ray.config import EngineConfig, SimulatorConfig
from mmc_ray.critique.schema import parse_critique
from mmc_ray.engine_protocol import (
    Completion,
    GenerationRequest,
    GenerationResult,
    apply_stop,
    error_result,
    message_text,
)
from mmc_ray.seeding import stable_hash
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.solution import (
    LABEL_OPS,
    OBSERVE_OPS,
    SolutionStep,
    apply_op,
    format_number,
    parse_reasoning,
    render_reasoning,
    render_step,
    stated_value,
)
from mmc_ray.tasks.synthetic import problem_from_id

CHARS_PER_TOKEN = 4  # token counts are approximate: the simulator has no tokenizer
WRONG_OP = {"add": "sub", "sub": "add", "mul": "add", "sum": "sub", "diff": "add",
            "max": "min", "min": "max", "argmax": "argmin", "argmin": "argmax"}
OP_SYMBOL = {"add": "+", "sub": "-", "mul": "×"}
DIGIT_CONFUSIONS = {"0": "8", "1": "7", "3": "8", "5": "6", "6": "5", "7": "1", "8": "3", "9": "4"}
_FLAGGED_STEP = re.compile(r"\bstep\s*#?\s*(\d+)", re.IGNORECASE)


def approx_tokens(text: str) -> int:
    """A token count for engines without a tokenizer (the simulator, the rule critic)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _perturb_observation(op: str, value: str, rng: random.Random) -> str:
    """A plausible misreading that always differs from `value`."""
    x = float(value)
    if op == "count":
        return format_number(x + 1 if x == 0 or rng.random() < 0.5 else x - 1)
    if op == "read_number":
        digits = [i for i, ch in enumerate(value) if ch in DIGIT_CONFUSIONS]
        if digits:
            i = rng.choice(digits)
            return value[:i] + DIGIT_CONFUSIONS[value[i]] + value[i + 1:]
        return format_number(x + rng.choice((-1, 1)))
    if op == "measure" and x != round(x):
        return format_number(round(x * rng.choice((0.75, 0.85, 1.15, 1.25)), 1))
    delta = max(1, round(abs(x) * rng.uniform(0.05, 0.2)))  # read_bar, integer measures
    return format_number(x + rng.choice((-delta, delta)))


def _slip(value: str, rng: random.Random) -> str:
    return format_number(float(value) + rng.choice((-2, -1, 1, 2, 10)))


def flagged_step(feedback: str) -> int | None:
    """The 1-based step a critique names as wrong: its "First wrong step" when it parses as a
    critique, else the first "step N" in free text."""
    parsed = parse_critique(feedback)
    if parsed.ok:
        return parsed.critique.first_wrong_step
    m = _FLAGGED_STEP.search(feedback)
    return int(m.group(1)) if m else None


class SimulatedActorEngine:
    """See the module docstring. Deterministic for (config seed, request seed, prompt, sample)."""

    name = "simulated"

    def __init__(self, cfg: SimulatorConfig,
                 problem_lookup: Callable[[str], Problem] = problem_from_id) -> None:
        self.cfg = cfg
        self._problem = lru_cache(maxsize=4096)(problem_lookup)

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> SimulatedActorEngine:
        return cls(cfg.simulator)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if self.cfg.call_latency_s:
            time.sleep(self.cfg.call_latency_s)
        return [self._generate_one(req) for req in requests]

    def _generate_one(self, req: GenerationRequest) -> GenerationResult:
        problem_id = req.metadata.get("problem_id", "")
        try:
            problem = self._problem(problem_id)
        except (KeyError, ValueError) as e:
            error = f"simulated actor needs metadata['problem_id'] of a synthetic problem: {e}"
            return error_result(req.n, error)
        written, revise_from = self._written_steps(problem, req)
        completions = []
        for s in range(req.n):
            rng = random.Random(stable_hash(self.cfg.seed, req.seed, problem_id, req.messages,
                                             req.assistant_prefix, s))
            kept, clean = written, None
            if revise_from is not None:
                # A failed revision keeps the flagged step as it was (feedback friction).
                fixes = rng.random() < self.cfg.revise_success_rate
                kept = written[: revise_from if fixes else revise_from + 1]
                clean = revise_from if fixes else None
            full = self._write(problem.steps, kept, clean, rng)
            if req.assistant_prefix:
                # Continue the prefix: only the lines after the steps it already has.
                full = "\n".join(full.splitlines()[len(kept):])
                if not req.assistant_prefix.endswith("\n"):
                    full = "\n" + full
            text, stopped = apply_stop(full, req.stop)
            limit = req.max_new_tokens * CHARS_PER_TOKEN
            finish = "stop" if stopped or len(text) <= limit else "length"
            text = text[:limit]
            completions.append(Completion(text, finish, approx_tokens(text)))
        prompt_chars = sum(len(message_text(m)) for m in req.messages) + len(req.assistant_prefix)
        return GenerationResult(tuple(completions), -(-prompt_chars // CHARS_PER_TOKEN))

    def _written_steps(self, problem: Problem,
                       req: GenerationRequest) -> tuple[list[tuple[str, str]], int | None]:
        """(text, value) of the steps already written (the assistant prefix, or the previous answer
        when revising) and, when revising, the 0-based index of the step the feedback flags."""
        turns = list(req.messages)
        is_revision = len(turns) >= 3 and turns[-1]["role"] == "user" and turns[-2]["role"] == "assistant"
        text = message_text(turns[-2]) if is_revision else req.assistant_prefix
        texts = parse_reasoning(text).steps[: len(problem.steps)]
        written = [(t, stated_value(problem.steps[i], t) or problem.steps[i].value)
                   for i, t in enumerate(texts)]
        if not is_revision:
            return written, None
        step = flagged_step(message_text(turns[-1]))
        # No step named: start over. A step past the end: redo the last one.
        return written, min(len(written) - 1, step - 1) if step and written else 0

    def _write(self, steps: Sequence[SolutionStep], kept: Sequence[tuple[str, str]],
               clean: int | None, rng: random.Random) -> str:
        """The kept steps, then the remaining steps with errors (none at step `clean`), then the
        answer."""
        cfg = self.cfg
        texts = [t for t, _ in kept]
        values = [v for _, v in kept]
        for i in range(len(kept), len(steps)):
            step = steps[i]
            exact = i == clean
            inputs = [values[j] for j in step.inputs]
            if step.op in OBSERVE_OPS:
                value = step.value
                if not exact and rng.random() < cfg.observe_error_rate:
                    value = _perturb_observation(step.op, value, rng)
                texts.append(render_step(step, value, []))
                values.append(value)
                continue
            op = step.op
            wrong_op = not exact and rng.random() < cfg.operation_error_rate
            if wrong_op:
                op = WRONG_OP[op]
            value = apply_op(op, inputs, [steps[j].label for j in step.inputs])
            if op not in LABEL_OPS and not exact and rng.random() < cfg.arithmetic_error_rate:
                value = _slip(value, rng)
            if wrong_op and op in OP_SYMBOL:
                texts.append(f"Combine them: {f' {OP_SYMBOL[op]} '.join(inputs)} = {value}.")
            else:
                texts.append(render_step(step, value, inputs))
            values.append(value)
        return render_reasoning(texts, values[-1])
