"""Search on a real local Ray: policy worker actors, the kill-a-worker test, the Ray Data stage."""

import dataclasses

import pyarrow.parquet as pq
import pytest
from worker_faults import search_killing_a_worker

from mmc_ray.config import EngineConfig, ResourcesConfig, SearchConfig, SimulatorConfig, TinyModelConfig
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.workers.dispatch import RayDispatcher
from mmc_ray.workers.group import create_worker_group
from mmc_ray.workers.role_worker import PolicyWorker

pytestmark = pytest.mark.slow

SEARCH = SearchConfig(num_simulations=6, expansion_width=3, rollouts_per_node=2, max_active_trees=32,
                      requests_per_call=24, shard_size=16)
SIMULATED = EngineConfig(kind="simulated", simulator=SimulatorConfig(observe_error_rate=0.25),
                         resources=ResourcesConfig(replicas=2, num_cpus=0.5, max_restarts=2))


def written_rows(out_dir):
    rows = [r for p in shard_paths(out_dir, "trees") for r in pq.read_table(p).to_pylist()]
    ids = [r["problem_id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicated trees"
    return rows


def test_search_over_synthetic_problems_with_policy_workers(ray_local, tmp_path):
    problems = list(generate_problems(60, seed=3))
    group = create_worker_group(PolicyWorker, SIMULATED)
    try:
        health = group.health()
        assert [h["role"] for h in health] == ["policy", "policy"]
        assert len({h["pid"] for h in health}) == 2
        summary = search_to_dir(problems, RayDispatcher(group.workers), SEARCH, tmp_path, progress=False)
        served = sum(h["requests_served"] for h in group.health())
    finally:
        group.shutdown()
    rows = written_rows(tmp_path)
    assert sorted(r["problem_id"] for r in rows) == sorted(p.problem_id for p in problems)
    assert summary.trees == 60 and served == summary.expansions + summary.rollouts // 2
    assert sum(r["terminal_correct"] for r in rows) > 0 and sum(r["terminal_wrong"] for r in rows) > 0
    assert any(r["terminal_correct"] and r["terminal_wrong"] for r in rows)


def test_killing_a_worker_mid_search_loses_and_duplicates_nothing(ray_local, tmp_path):
    """Tiny HF VLM workers (slow enough that a batch is in flight when the kill lands)."""
    from mmc_ray.models.tiny import build_tiny_vlm

    model = build_tiny_vlm(TinyModelConfig(), tmp_path / "tiny-vlm")
    cfg = EngineConfig(kind="hf", model_path=str(model), device="cpu", dtype="float32",
                       max_batch_size=16, max_pixels=56 * 56,
                       resources=ResourcesConfig(replicas=2, num_cpus=0.5, max_restarts=3))
    search = dataclasses.replace(SEARCH, num_simulations=2, step_max_tokens=8, rollout_max_tokens=16,
                                 max_active_trees=8, requests_per_call=8)
    group = create_worker_group(PolicyWorker, cfg)
    problems = list(generate_problems(12, seed=4))
    try:
        summary, pid_before, pid_after = search_killing_a_worker(ray_local, group, problems, search,
                                                                 tmp_path / "trees", 60)
    finally:
        group.shutdown()
    assert summary.failed_batches >= 1 and summary.worker_restarts >= 1
    assert pid_after != pid_before
    rows = written_rows(tmp_path / "trees")
    assert sorted(r["problem_id"] for r in rows) == sorted(p.problem_id for p in problems)
    assert sum(r["failed_generations"] for r in rows) == 0  # the lost batches ran again, none is a result


class KillOnSubmit(RayDispatcher):
    """Kills `victims` for good (no restart) right after the `at`-th batch goes out."""

    def __init__(self, ray, workers, victims, at=3):
        super().__init__(workers, inflight_per_worker=2)
        self.ray, self.victims, self.at, self.submitted = ray, victims, at, 0

    def submit(self, batch):
        ticket = super().submit(batch)
        self.submitted += 1
        if self.submitted == self.at:
            for victim in self.victims:
                self.ray.kill(victim, no_restart=True)
        return ticket


SLOW = dataclasses.replace(SIMULATED, simulator=SimulatorConfig(observe_error_rate=0.25, call_latency_s=0.2))


def test_a_worker_dead_for_good_shrinks_the_pool_and_poisons_no_tree(ray_local, tmp_path):
    group = create_worker_group(PolicyWorker, SLOW)
    problems = list(generate_problems(16, seed=6))
    try:
        summary = search_to_dir(problems, KillOnSubmit(ray_local, group.workers, group.workers[:1]), SEARCH,
                                tmp_path, progress=False)
    finally:
        group.shutdown()
    rows = written_rows(tmp_path)
    assert summary.trees == 16 and summary.worker_restarts >= 1
    assert sum(r["failed_generations"] for r in rows) == 0


def test_every_worker_dead_stops_the_search_and_keeps_what_finished(ray_local, tmp_path):
    from mmc_ray.workers.dispatch import CapacityLost

    group = create_worker_group(PolicyWorker, SLOW)
    problems = list(generate_problems(16, seed=6))
    search = dataclasses.replace(SEARCH, max_active_trees=4, requests_per_call=8, shard_size=1)
    try:
        with pytest.raises(CapacityLost, match="dead past their max_restarts"):
            search_to_dir(problems, KillOnSubmit(ray_local, group.workers, group.workers, at=12), search,
                          tmp_path, progress=False)
    finally:
        group.shutdown()
    rows = written_rows(tmp_path)
    assert len(rows) < 16 and sum(r["failed_generations"] for r in rows) == 0  # a rerun searches the rest


def test_control_methods_answer_while_generating_and_reload_swaps(ray_local):
    group = create_worker_group(PolicyWorker, dataclasses.replace(
        SIMULATED, resources=ResourcesConfig(replicas=1, num_cpus=0.5)))
    worker = group.workers[0]
    try:
        from mmc_ray.engine_protocol import GenerationRequest
        from mmc_ray.tasks.prompts import solve_messages

        problem = next(generate_problems(1))
        big = [GenerationRequest(messages=solve_messages(problem), images=(problem.image,), n=64,
                                 metadata={"problem_id": problem.problem_id})] * 200
        pending = worker.generate.remote(big)
        assert ray_local.get(worker.health.remote(), timeout=30)["role"] == "policy"
        assert ray_local.get(worker.reload.remote("unused-by-simulator"), timeout=30) == 1
        assert len(ray_local.get(pending)) == 200
        assert ray_local.get(worker.health.remote())["version"] == 1
    finally:
        group.shutdown()


def test_stage_metrics_are_exported_when_ray_runs(ray_local):
    from mmc_ray.dashboard_metrics import StageMetrics

    metrics = StageMetrics("test", counters=("things",), gauges=("depth",))
    assert metrics.enabled
    metrics.inc("things", 3)
    metrics.set("depth", 7)
    metrics.inc("not_declared")  # unknown names are ignored, never raise mid-run


def test_placement_fails_clearly_when_the_cluster_is_too_small(ray_local):
    too_big = dataclasses.replace(SIMULATED, resources=ResourcesConfig(replicas=8, num_cpus=1))
    with pytest.raises(RuntimeError, match="needs 8 CPU in total but the Ray cluster has 2"):
        create_worker_group(PolicyWorker, too_big)


def test_annotate_streams_through_ray_data(ray_local, tmp_path):
    from mmc_ray.config import Config
    from mmc_ray.engines.simulated import SimulatedActorEngine
    from mmc_ray.stages.annotate import annotate_to_dir
    from mmc_ray.stages.dataset_card import card_stats
    from mmc_ray.workers.dispatch import LocalDispatcher

    trees = tmp_path / "trees"
    search_to_dir(list(generate_problems(24, seed=8)), LocalDispatcher(SimulatedActorEngine(SIMULATED.simulator)),
                  dataclasses.replace(SEARCH, shard_size=6), trees, progress=False)
    assert len(shard_paths(trees, "trees")) == 4  # several shards: the stream has several blocks
    local = annotate_to_dir(trees, tmp_path / "local", Config(), local=True, progress=False)
    streamed = annotate_to_dir(trees, tmp_path / "ray", Config(), local=False, progress=False)
    assert (streamed.critiques, streamed.drops) == (local.critiques, local.drops) and local.critiques > 0
    ours, theirs = card_stats(tmp_path / "ray"), card_stats(tmp_path / "local")
    assert ours["split"] == theirs["split"] and ours["error_type"] == theirs["error_type"]
