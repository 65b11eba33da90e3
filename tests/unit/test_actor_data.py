"""The flywheel's actor data: correct MCTS paths of simulated-actor searches, as actor-SFT rows."""

from collections import Counter

import pyarrow.parquet as pq
import pytest

from mmc_ray.config import SearchConfig, SimulatorConfig
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.schemas import ACTOR_SFT_SCHEMA, TREE_SCHEMA
from mmc_ray.stages.actor_data import actor_sft_rows, write_actor_data
from mmc_ray.stages.search import run_search, tree_row
from mmc_ray.store.layout import TREES
from mmc_ray.store.shards import ShardWriter
from mmc_ray.tasks.scoring import answers_match
from mmc_ray.tasks.solution import parse_reasoning
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.workers.dispatch import LocalDispatcher


@pytest.fixture(scope="module")
def searched():
    problems = list(generate_problems(20, seed=21))
    rows = []
    run_search(problems, LocalDispatcher(SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.3))),
               SearchConfig(num_simulations=8, rollouts_per_node=3), lambda p, t: rows.append(tree_row(p, t)),
               progress=False)
    return problems, rows


def test_rows_are_correct_paths_in_the_actor_format(searched):
    problems, trees = searched
    by_id = {p.problem_id: p for p in problems}
    rows = actor_sft_rows(trees, by_id, paths_per_problem=2)
    per_problem = Counter(r["problem_id"] for r in rows)
    assert len(per_problem) >= 10 and max(per_problem.values()) <= 2
    assert any(n == 2 for n in per_problem.values())
    for row in rows:
        problem = by_id[row["problem_id"]]
        parsed = parse_reasoning(row["solution"])
        assert parsed.steps and row["solution"].startswith("Step 1: ")
        assert answers_match(parsed.answer, problem.answer, problem.answer_type, problem.choices)
        assert {k: row[k] for k in ("question", "image", "answer")} == \
            {"question": problem.question, "image": problem.image, "answer": problem.answer}
    assert len({(r["problem_id"], r["solution"]) for r in rows}) == len(rows)  # distinct per problem


def test_a_tree_without_its_problem_is_an_error(searched):
    _, trees = searched
    with pytest.raises(KeyError, match=trees[0]["problem_id"]):
        actor_sft_rows(trees[:1], {}, paths_per_problem=1)


def test_written_once_and_kept_on_rerun(searched, tmp_path):
    problems, trees = searched
    writer = ShardWriter(tmp_path / "trees", TREES, TREE_SCHEMA, shard_size=8)
    for tree in trees:
        writer.add(tree)
    writer.flush()
    data = write_actor_data(tmp_path / "trees", problems, tmp_path / "actor-sft", paths_per_problem=1)
    table = pq.read_table(data.path)
    assert table.schema.equals(ACTOR_SFT_SCHEMA)
    assert data.rows == table.num_rows == data.problems == len(actor_sft_rows(trees, {p.problem_id: p for p in problems}, 1))
    mtime = data.path.stat().st_mtime_ns
    assert write_actor_data(tmp_path / "trees", problems[:1], tmp_path / "actor-sft", 1) == data
    assert data.path.stat().st_mtime_ns == mtime
