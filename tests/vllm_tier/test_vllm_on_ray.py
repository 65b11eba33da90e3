"""vLLM in every role on a real local Ray: policy workers under MCTS (a worker killed mid-search) and
the LLM annotator. The refinement critic on vLLM workers, loaded from the round's training, runs in
tests/vllm_tier/test_pipeline_vllm.py; reload in tests/vllm_tier/test_vllm_engine.py."""

import dataclasses

import pyarrow.parquet as pq
import pytest
from worker_faults import search_killing_a_worker

from mmc_ray.config import (
    Config,
    EngineConfig,
    ResourcesConfig,
    SearchConfig,
    SimulatorConfig,
    VLLMConfig,
)
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.workers.dispatch import LocalDispatcher
from mmc_ray.workers.group import create_worker_group
from mmc_ray.workers.role_worker import PolicyWorker

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def vllm_cfg(model_path, replicas=1, concurrent_batches=1) -> EngineConfig:
    return EngineConfig(kind="vllm", model_path=str(model_path), device="cpu", dtype="float32",
                        vllm=VLLMConfig(cpu_kv_cache_gib=1, max_model_len=2048, max_images_per_prompt=1,
                                        concurrent_batches=concurrent_batches),
                        max_pixels=56 * 56, max_batch_size=16,
                        resources=ResourcesConfig(replicas=replicas, num_cpus=0.5, max_restarts=3))


def written_rows(out_dir):
    rows = [r for p in shard_paths(out_dir, "trees") for r in pq.read_table(p).to_pylist()]
    ids = [r["problem_id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicated trees"
    return rows


def test_search_on_vllm_policy_workers_survives_a_killed_worker(ray_local, tiny_vlm_path, tmp_path):
    """Each worker generates 2 batches at once (one shared vLLM batch) while one worker is killed."""
    search = SearchConfig(num_simulations=2, expansion_width=3, rollouts_per_node=2, step_max_tokens=8,
                          rollout_max_tokens=16, max_active_trees=8, requests_per_call=4, shard_size=4)
    group = create_worker_group(PolicyWorker, vllm_cfg(tiny_vlm_path, replicas=2, concurrent_batches=2))
    assert {h["engine"] for h in group.health(timeout_s=300)} == {"vllm"}  # two engine starts
    problems = list(generate_problems(12, seed=4))
    try:
        summary, pid_before, pid_after = search_killing_a_worker(ray_local, group, problems, search,
                                                                 tmp_path / "trees", 120, call_timeout_s=30,
                                                                 inflight_per_worker=3)
        health = group.health()
    finally:
        group.shutdown()
    assert summary.worker_restarts >= 1 and pid_after != pid_before
    rows = written_rows(tmp_path / "trees")
    assert sorted(r["problem_id"] for r in rows) == sorted(p.problem_id for p in problems)
    assert summary.trees == 12 and summary.expansions > 0
    assert sum(h["requests_served"] for h in health) > 0
    assert max(h["peak_batches"] for h in health) == 2  # batches did share an engine


def test_llm_annotator_on_vllm_workers_accounts_for_every_pair(ray_local, tiny_vlm_path, tmp_path):
    from mmc_ray.stages.annotate import annotate_to_dir, mine_tree_rows
    from mmc_ray.stages.dataset_card import card_stats

    trees = tmp_path / "trees"
    search_to_dir(list(generate_problems(6, seed=21)),
                  LocalDispatcher(SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.3))),
                  SearchConfig(num_simulations=6, rollouts_per_node=3), trees, progress=False)
    cfg = Config()
    cfg = dataclasses.replace(cfg, annotator=vllm_cfg(tiny_vlm_path), annotate=dataclasses.replace(
        cfg.annotate, method="llm", max_new_tokens=24, max_repair_attempts=1))
    summary = annotate_to_dir(trees, tmp_path / "ds", cfg, progress=False)
    tree_rows = [r for p in shard_paths(trees, "trees") for r in pq.read_table(p).to_pylist()]
    expected = {r.pair_id for r in mine_tree_rows(tree_rows, cfg.annotate)}
    # a random-weight model writes no parseable critique: each pair is a row or a counted drop
    assert expected and summary.critiques + summary.drops == len(expected)
    stats = card_stats(tmp_path / "ds")
    assert stats["rows"] + stats["drops"] == len(expected)
    assert all(reason.startswith("unparseable after 2 attempt(s)") for reason in stats["drop_reason"])
