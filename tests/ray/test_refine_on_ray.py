"""Refinement with actor and critic as Ray worker pools on a real local Ray."""

import dataclasses

import pytest

from mmc_ray.config import EngineConfig, RefineConfig, ResourcesConfig, SimulatorConfig
from mmc_ray.engine_protocol import ScoresContinuations
from mmc_ray.engines.factory import build_engine
from mmc_ray.refine.loop import RefinementLoop
from mmc_ray.refine.verify import sample_and_verify
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.workers.pool import role_engine
from mmc_ray.workers.role_worker import CriticWorker, PolicyWorker

POOL = ResourcesConfig(replicas=2, num_cpus=0.25)
ACTOR = EngineConfig(kind="simulated", simulator=SimulatorConfig(observe_error_rate=0.3), resources=POOL)
CRITIC = EngineConfig(kind="rule", resources=POOL)
CFG = RefineConfig(max_rounds=2, problems_per_batch=16)


def test_worker_pools_give_the_same_records_as_local_engines(ray_local):
    problems = list(generate_problems(20, seed=21))
    local = RefinementLoop(build_engine(ACTOR), build_engine(CRITIC), CFG).run(problems)
    with role_engine(PolicyWorker, ACTOR) as actor, role_engine(CriticWorker, CRITIC) as critic:
        assert actor.name == "policy[simulated]x2" and critic.name == "critic[rule]x2"
        pooled = RefinementLoop(actor, critic, CFG).run(problems)
    assert pooled == local  # seeds are per problem and round: placement does not change results
    assert any(r.round > 0 for r in pooled)


def test_a_killed_critic_worker_is_retried_and_nothing_is_lost(ray_local):
    problems = list(generate_problems(12, seed=22))
    critic_cfg = dataclasses.replace(CRITIC, resources=dataclasses.replace(POOL, max_restarts=2))
    with role_engine(PolicyWorker, ACTOR) as actor, role_engine(CriticWorker, critic_cfg) as critic:
        ray_local.kill(critic.workers[0], no_restart=False)  # Ray restarts it; its chunk is resent
        rows = RefinementLoop(actor, critic, CFG).run(problems)
    assert {r.problem_id for r in rows} == {p.problem_id for p in problems}
    assert all(r.critic_verdict is not None for r in rows)


def test_a_pool_of_hf_critics_scores_best_of_n_samples_as_the_local_engine_does(ray_local, tiny_vlm_path):
    problems = list(generate_problems(4, seed=23))
    cfg = RefineConfig(best_of_n=(1, 2), problems_per_batch=4)
    critic_cfg = EngineConfig(kind="hf", model_path=str(tiny_vlm_path), device="cpu", dtype="float32",
                              resources=POOL)
    local = sample_and_verify(problems, build_engine(ACTOR), build_engine(critic_cfg), cfg)
    with role_engine(CriticWorker, critic_cfg) as critic:
        assert isinstance(critic, ScoresContinuations)  # so best-of-N scores by likelihood, not by verdict
        pooled = sample_and_verify(problems, build_engine(ACTOR), critic, cfg)
    assert {r["scored_by"] for r in pooled} == {"likelihood"} and len(pooled) == 8
    assert [r["p_correct"] for r in pooled] == pytest.approx([r["p_correct"] for r in local], abs=1e-5)


def test_a_pool_of_critics_that_cannot_score_is_not_taken_for_one(ray_local):
    with role_engine(CriticWorker, CRITIC) as critic:
        assert not isinstance(critic, ScoresContinuations)
