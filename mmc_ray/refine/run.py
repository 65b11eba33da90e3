"""Refine a problem set into a folder of `refine-NNNNN.parquet` shards, resumable by problem id:
a rerun skips problems already written, and a crash loses at most the batch in flight."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mmc_ray.config import RefineConfig
from mmc_ray.generation import GenerationEngine
from mmc_ray.metrics import StageMetrics
from mmc_ray.refine.loop import RefinementLoop
from mmc_ray.schemas import REFINE_SCHEMA
from mmc_ray.store.layout import REFINE
from mmc_ray.store.shards import ShardWriter, finished_ids
from mmc_ray.tasks.problem import Problem


@dataclass(frozen=True)
class RefineSummary:
    problems: int
    resumed: int
    rounds: int
    seconds: float


def refine_to_dir(problems: Sequence[Problem], actor: GenerationEngine, critic: GenerationEngine,
                  cfg: RefineConfig, out_dir: str | Path, progress: bool = True) -> RefineSummary:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = finished_ids(out_dir, REFINE, "problem_id")
    todo = [p for p in problems if p.problem_id not in done]
    loop = RefinementLoop(actor, critic, cfg)
    # One shard per batch: a finished batch is on disk before the next one starts.
    writer = ShardWriter(out_dir, REFINE, REFINE_SCHEMA, shard_size=1 << 30, key="problem_id")
    rounds = 0
    start = time.perf_counter()
    metrics = StageMetrics("refine", counters=("problems", "rounds", "wrong_to_right", "right_to_wrong"),
                           gauges=())
    with tqdm(total=len(todo), desc="refine", unit="problem", disable=not progress) as bar:
        for begin in range(0, len(todo), cfg.problems_per_batch):
            batch = todo[begin:begin + cfg.problems_per_batch]
            records = loop.run(batch)
            for record in records:
                writer.add(record.to_row())
            writer.flush()
            rounds += len(records)
            first = {r.problem_id: r.correct for r in records if r.round == 0}
            final = {r.problem_id: r.correct for r in records if r.final}
            metrics.inc("problems", len(batch))
            metrics.inc("rounds", len(records))
            metrics.inc("wrong_to_right", sum(final[k] and not first[k] for k in final))
            metrics.inc("right_to_wrong", sum(first[k] and not final[k] for k in final))
            bar.update(len(batch))
    return RefineSummary(problems=len(todo), resumed=len(problems) - len(todo), rounds=rounds,
                         seconds=time.perf_counter() - start)
