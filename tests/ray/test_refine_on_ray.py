"""Refinement with actor and critic as Ray worker pools on a real local Ray."""

import dataclasses

from mmc_ray.config import EngineConfig, RefineConfig, ResourcesConfig, SimulatorConfig
from mmc_ray.engines.factory import build_engine
from mmc_ray.refine.loop import RefinementLoop
from mmc_ray.tasks.generator import generate_problems
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
