"""Refine a problem set into a folder of `refine-NNNNN.parquet` shards, or sample and verify its
best-of-N answers into `best-of-n-NNNNN.parquet` shards, resumable by problem id: a rerun skips
problems already written, and a crash loses at most the batch in flight."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from mmc_ray.config import RefineConfig
from mmc_ray.dashboard_metrics import StageMetrics
from mmc_ray.engine_protocol import GenerationEngine
from mmc_ray.refine.loop import RefinementLoop
from mmc_ray.refine.verify import sample_and_verify
from mmc_ray.schemas import BEST_OF_N_SCHEMA, REFINE_SCHEMA
from mmc_ray.store.layout import BEST_OF_N, REFINE
from mmc_ray.store.shards import ShardWriter, finished_ids
from mmc_ray.tasks.problem import Problem


@dataclass(frozen=True)
class RefineSummary:
    problems: int
    resumed: int
    rows: int  # rows written: refinement rounds, or best-of-N answers
    seconds: float


def _in_batches(problems: Sequence[Problem], out_dir: str | Path, prefix: str, schema: pa.Schema,
                batch_size: int, desc: str, progress: bool,
                run: Callable[[Sequence[Problem]], list[dict[str, Any]]]) -> RefineSummary:
    """`run` on each batch of the problems not yet in `out_dir`; each batch's rows are one shard, on
    disk before the next batch starts, so a crash loses at most the batch in flight."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = finished_ids(out_dir, prefix, "problem_id")
    todo = [p for p in problems if p.problem_id not in done]
    writer = ShardWriter(out_dir, prefix, schema, shard_size=1 << 30, key="problem_id")
    start = time.perf_counter()
    with tqdm(total=len(todo), desc=desc, unit="problem", disable=not progress) as bar:
        for begin in range(0, len(todo), batch_size):
            batch = todo[begin:begin + batch_size]
            for row in run(batch):
                writer.add(row)
            writer.flush()
            bar.update(len(batch))
    return RefineSummary(problems=len(todo), resumed=len(problems) - len(todo), rows=writer.rows_written,
                         seconds=time.perf_counter() - start)


def refine_to_dir(problems: Sequence[Problem], actor: GenerationEngine, critic: GenerationEngine,
                  cfg: RefineConfig, out_dir: str | Path, progress: bool = True) -> RefineSummary:
    loop = RefinementLoop(actor, critic, cfg)
    metrics = StageMetrics("refine", counters=("problems", "rounds", "wrong_to_right", "right_to_wrong"),
                           gauges=())

    def run(batch: Sequence[Problem]) -> list[dict[str, Any]]:
        records = loop.run(batch)
        first = {r.problem_id: r.correct for r in records if r.round == 0}
        final = {r.problem_id: r.correct for r in records if r.final}
        metrics.inc("problems", len(batch))
        metrics.inc("rounds", len(records))
        metrics.inc("wrong_to_right", sum(final[k] and not first[k] for k in final))
        metrics.inc("right_to_wrong", sum(first[k] and not final[k] for k in final))
        return [record.to_row() for record in records]

    return _in_batches(problems, out_dir, REFINE, REFINE_SCHEMA, cfg.problems_per_batch, "refine", progress,
                       run)


def best_of_n_to_dir(problems: Sequence[Problem], actor: GenerationEngine, critic: GenerationEngine,
                     cfg: RefineConfig, out_dir: str | Path, progress: bool = True) -> RefineSummary:
    """N sampled answers per problem with the critic's scores (`refine.verify`), resumable likewise."""
    return _in_batches(problems, out_dir, BEST_OF_N, BEST_OF_N_SCHEMA, cfg.problems_per_batch, "best-of-n",
                       progress, lambda batch: sample_and_verify(batch, actor, critic, cfg))
