"""`mmc-ray eval-critic`: a critic scored on step-labelled solutions (a VisualProcessBench file, or
our own held-out critique split), as the field reports critics: ProcessBench F1 from its parsed
critiques, and step macro-F1 both from those critiques and from its step soundness probabilities
(the local engine's likelihoods, or a served critic's `/v1/score_steps`). Per data source too."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mmc_ray.critique.prompts import critic_messages
from mmc_ray.critique.schema import parse_critique
from mmc_ray.critique.step_scores import outcome_openings, step_scores
from mmc_ray.engine_protocol import GenerationEngine, GenerationRequest, ScoresContinuations, ScoresSteps
from mmc_ray.errors import MissingInput
from mmc_ray.eval.processbench import CriticBenchReport, critic_bench_report, step_predictions_from_critique
from mmc_ray.io import read_parquet, write_text_atomic
from mmc_ray.store.layout import split_shards
from mmc_ray.store.shards import verified_shards
from mmc_ray.tasks.problem import Problem, SkippedRow
from mmc_ray.tasks.step_bench import LabelledSolution, StepBenchLoad, load_visual_process_bench


def critique_labels(n_steps: int, verdict: str, first_wrong_step: int | None) -> tuple[int, ...]:
    """Step labels a critique implies: the steps it judges (sound before its first wrong step, that
    one wrong; every step of a "correct" one), the rest neutral (0): the annotator says nothing of them."""
    judged = step_predictions_from_critique(n_steps, verdict, first_wrong_step)
    return tuple(0 if p is None else p for p in judged)


def critique_solution(row: dict[str, Any]) -> LabelledSolution | SkippedRow:
    """An MMC dataset row (CRITIQUE_SCHEMA) as a step-labelled solution with the path's own answer
    line, as the critic is trained to read it; a row with no steps or a wrong step out of range is
    skipped."""
    steps = tuple(row["path_steps"] or ())
    step = row["first_wrong_step"]
    if not steps or (step is not None and not 1 <= step <= len(steps)):
        return SkippedRow(row["pair_id"], "no steps, or a wrong step out of range")
    problem = Problem.from_row({**row, "steps": []})  # judged by its labels, not a program
    return LabelledSolution(row["pair_id"], problem, steps, critique_labels(len(steps), row["verdict"], step),
                            row["family"] or "", answer=row["path_answer"])


def load_critique_split(dataset_dir: Path, split: str = "test") -> StepBenchLoad:
    """An MMC dataset folder's `split` as step-labelled solutions (tasks/step_bench.py)."""
    shards = verified_shards(split_shards(dataset_dir, split))
    if not shards:
        raise MissingInput(f"no {split} split in {dataset_dir} (data/{split}-*.parquet)")
    load = StepBenchLoad()
    for shard in shards:
        for row in read_parquet(shard).to_pylist():
            solution = critique_solution(row)
            (load.skipped if isinstance(solution, SkippedRow) else load.solutions).append(solution)
    return load


def load_step_bench(path: Path) -> StepBenchLoad:
    """A VisualProcessBench-layout .jsonl file, or an MMC dataset folder (its test split)."""
    return load_critique_split(path) if path.is_dir() else load_visual_process_bench(path)


def _step_sound(critic: GenerationEngine, request: GenerationRequest,
                solution: LabelledSolution) -> list[float] | None:
    """P(step i is sound) from a critic that scores steps (a served one) or continuations (a local
    one, from its likelihood of each outcome's opening); None from any other."""
    if isinstance(critic, ScoresSteps):
        problem = solution.problem
        return critic.step_sound(problem.question, solution.steps, solution.answer, problem.images)
    if isinstance(critic, ScoresContinuations):
        return list(step_scores(critic.score(request, outcome_openings(len(solution.steps)))).step_sound)
    return None


def judge(solutions: Sequence[LabelledSolution], critic: GenerationEngine, max_new_tokens: int,
          batch_size: int = 16, progress: bool = True, text_only: bool = False,
          score_steps: bool = True) -> list[dict[str, Any]]:
    """One row per solution: its labels and what the critic said (see `critic_bench_report`), with
    step soundness where the critic gives it and `score_steps` asks for it. `text_only` asks
    without the image: the baseline that shows whether a critic uses what it sees."""
    rows = []
    bar = tqdm(total=len(solutions), desc="eval-critic", unit="solution", disable=not progress)
    for begin in range(0, len(solutions), batch_size):
        batch = solutions[begin:begin + batch_size]
        if text_only:
            batch = [dataclasses.replace(s, problem=dataclasses.replace(s.problem, image=None))
                     for s in batch]
        requests = [GenerationRequest(messages=critic_messages(s.problem, s.steps, s.answer),
                                      images=s.problem.images, max_new_tokens=max_new_tokens, temperature=0.0,
                                      metadata={"problem_id": s.problem.problem_id}) for s in batch]
        for solution, request, result in zip(batch, requests, critic.generate(requests), strict=True):
            completion = result.completions[0]
            parsed = parse_critique(completion.text, num_steps=len(solution.steps)).critique \
                if completion.finish_reason != "error" else None
            sound = _step_sound(critic, request, solution) if score_steps else None
            rows.append({"solution_id": solution.solution_id, "source": solution.source,
                         "policy_model": solution.policy_model, "labels": list(solution.labels),
                         "label": solution.first_wrong_step,
                         "verdict": parsed.verdict if parsed else None,
                         "first_wrong_step": parsed.first_wrong_step if parsed else None,
                         "critic_text": completion.text, "step_sound": sound,
                         "engine_error": completion.error if completion.finish_reason == "error" else None})
        bar.update(len(batch))
    bar.close()
    return rows


@dataclass(frozen=True)
class CriticBenchRun:
    """What `write_critic_bench` wrote: the critic's figures, the solutions left out for an engine
    error (id and error), and the benchmark rows skipped at load."""

    report: CriticBenchReport
    engine_errors: list[dict[str, str]]
    skipped: int


def write_critic_bench(rows: list[dict[str, Any]], load: StepBenchLoad, out: Path,
                       context: dict[str, Any]) -> CriticBenchRun:
    """report.json (figures, skipped rows) and judged.jsonl (every solution) in `out`. A solution the
    engine failed on (a server that stayed unreachable, a request it refused) says nothing of the
    critic: it is left out of the figures and listed with its error, never scored as a bad critique."""
    judged = [r for r in rows if r["engine_error"] is None]
    failed = [{"solution_id": r["solution_id"], "error": r["engine_error"]}
              for r in rows if r["engine_error"] is not None]
    report = critic_bench_report(judged)
    written = {**context, **report.to_json(), "engine_errors": failed,
               "skipped": [vars(s) for s in load.skipped], "several_images": load.several_images}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic("".join(json.dumps(r) + "\n" for r in rows), out / "judged.jsonl")
    write_text_atomic(json.dumps(written, indent=2), out / "report.json")
    return CriticBenchRun(report, failed, len(load.skipped))
