"""Single-pass generation: run an engine over a problem set in batches, score every sample, write
one Parquet row per sample and report accuracy overall and per task family."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from mmc_ray.config import SamplingConfig
from mmc_ray.engine_protocol import GenerationEngine, GenerationRequest
from mmc_ray.io import write_parquet_atomic
from mmc_ray.schemas import GENERATION_SCHEMA
from mmc_ray.seeding import stable_seed
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.prompts import solve_request
from mmc_ray.tasks.scoring import score_text


@dataclass(frozen=True)
class GenerateSummary:
    engine: str
    samples: int
    correct: int
    errors: int
    seconds: float
    out_path: Path
    family_correct: dict[str, int] = field(default_factory=dict)
    family_samples: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples if self.samples else 0.0


def problem_seed(base_seed: int, problem_id: str) -> int:
    """A per-problem sampling seed that does not depend on batch order."""
    return stable_seed(base_seed, problem_id)


def single_pass_request(problem: Problem, sampling: SamplingConfig) -> GenerationRequest:
    return solve_request(problem, n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                         max_new_tokens=sampling.max_new_tokens,
                         seed=problem_seed(sampling.seed, problem.problem_id))


def run_generate(problems: Sequence[Problem], engine: GenerationEngine, sampling: SamplingConfig,
                 out_path: str | Path, batch_size: int = 16, progress: bool = True) -> GenerateSummary:
    """Generate `sampling.n` answers per problem, score them, and write them to `out_path`."""
    out_path = Path(out_path)
    rows = []
    family_correct: Counter[str] = Counter()
    family_samples: Counter[str] = Counter()
    errors = 0
    start = time.perf_counter()
    bar = tqdm(total=len(problems), desc=f"generate[{engine.name}]", unit="problem", disable=not progress)
    for begin in range(0, len(problems), batch_size):
        batch = problems[begin:begin + batch_size]
        results = engine.generate([single_pass_request(p, sampling) for p in batch])
        for problem, result in zip(batch, results, strict=True):
            for index, completion in enumerate(result.completions):
                score = score_text(completion.text, problem)
                errors += completion.finish_reason == "error"
                family_samples[problem.family] += 1
                family_correct[problem.family] += score.correct
                rows.append({
                    "problem_id": problem.problem_id,
                    "sample_index": index,
                    "family": problem.family,
                    "engine": engine.name,
                    "text": completion.text,
                    "extracted_answer": score.extracted,
                    "correct": score.correct,
                    "finish_reason": completion.finish_reason,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                })
        bar.update(len(batch))
        bar.set_postfix(acc=f"{sum(family_correct.values()) / max(1, len(rows)):.3f}")
    bar.close()
    write_parquet_atomic(rows, GENERATION_SCHEMA, out_path)
    return GenerateSummary(
        engine=engine.name, samples=len(rows), correct=sum(family_correct.values()), errors=errors,
        seconds=time.perf_counter() - start, out_path=out_path,
        family_correct=dict(family_correct), family_samples=dict(family_samples),
    )
