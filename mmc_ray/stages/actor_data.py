"""The flywheel's actor data: each problem's correct MCTS paths as solutions for actor SFT
(STaR-style: the actor learns from its own reasoning that reached the right answer)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mmc_ray.io import write_parquet_atomic
from mmc_ray.mcts.pairs import correct_paths
from mmc_ray.mcts.tree import nodes_from_rows
from mmc_ray.schemas import ACTOR_SFT_SCHEMA
from mmc_ray.store.layout import ACTOR_SFT_FILE, tree_shards
from mmc_ray.store.shards import verified_shards
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.solution import render_reasoning


@dataclass(frozen=True)
class ActorData:
    path: Path
    problems: int  # problems with at least one correct path
    rows: int  # solutions written (at most `paths_per_problem` per problem)


def actor_sft_rows(trees: Iterable[dict[str, Any]], problems: dict[str, Problem],
                   paths_per_problem: int) -> list[dict[str, Any]]:
    """ACTOR_SFT_SCHEMA rows from stored tree rows (`problem_id`, `nodes`). A tree whose problem is
    not in `problems` is an error: its solutions would have no question."""
    rows: list[dict[str, Any]] = []
    for tree in trees:
        if tree["problem_id"] not in problems:
            raise KeyError(f"tree of problem {tree['problem_id']!r} is not in the problems file")
        problem_row = problems[tree["problem_id"]].to_row()
        for path in correct_paths(nodes_from_rows(tree["nodes"]), paths_per_problem):
            rows.append({**problem_row, "solution": render_reasoning(path.steps, path.answer or "")})
    return rows


def write_actor_data(trees_dir: Path, problems: Iterable[Problem], out_dir: Path,
                     paths_per_problem: int) -> ActorData:
    """Write `out_dir/actor-sft.parquet` from a round's trees (kept if already there: a rerun
    trains on the same rows)."""
    path = out_dir / ACTOR_SFT_FILE
    if not path.exists():
        trees = (tree for shard in verified_shards(tree_shards(trees_dir))
                 for tree in pq.read_table(shard, columns=["problem_id", "nodes"]).to_pylist())
        rows = actor_sft_rows(trees, {p.problem_id: p for p in problems}, paths_per_problem)
        write_parquet_atomic(rows, ACTOR_SFT_SCHEMA, path)
    ids = pq.read_table(path, columns=["problem_id"]).column("problem_id").to_pylist()
    return ActorData(path, len(set(ids)), len(ids))
