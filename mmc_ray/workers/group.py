"""The one place that places workers: resources checked first, one placement group per role,
bundle i holds replica i, and waiting for placement has a timeout with a clear error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mmc_ray.config import EngineConfig
from mmc_ray.errors import NotEnoughResources
from mmc_ray.ray_runtime import require_resources
from mmc_ray.workers.role_worker import RoleWorker, concurrency_groups


@dataclass
class WorkerGroup:
    role: str
    workers: list[Any]
    placement: Any

    def health(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        return ray.get([w.health.remote() for w in self.workers], timeout=timeout_s)

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
        remove_placement_group(self.placement)


def create_worker_group(worker_cls: type[RoleWorker], cfg: EngineConfig) -> WorkerGroup:
    """Start `cfg.resources.replicas` actors of `worker_cls`, each in its own bundle."""
    role, res = worker_cls.role, cfg.resources
    require_resources(f"{role} workers",
                      {"CPU": res.num_cpus * res.replicas, "GPU": res.num_gpus * res.replicas},
                      fix="lower the role's resources.replicas, num_cpus or num_gpus")
    custom = {res.node_resource: 1.0} if res.node_resource else {}
    if custom:
        require_resources(f"{role} workers", {res.node_resource: float(res.replicas)},
                          fix=f"start nodes with the custom resource {res.node_resource} "
                              f"(ray start --resources) or clear resources.node_resource")
    bundle = {"CPU": res.num_cpus, **({"GPU": res.num_gpus} if res.num_gpus else {}), **custom}
    pg = placement_group([dict(bundle) for _ in range(res.replicas)], strategy=res.placement_strategy)
    try:
        ray.get(pg.ready(), timeout=res.placement_timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise NotEnoughResources(
            f"{role}: could not place {res.replicas} x {bundle} ({res.placement_strategy}) within "
            f"{res.placement_timeout_s:g}s; check free resources in the Ray dashboard"
        ) from None
    actor_cls = ray.remote(concurrency_groups=concurrency_groups(cfg))(worker_cls)
    workers = [
        actor_cls.options(
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            resources=custom,
            max_restarts=res.max_restarts,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
        ).remote(cfg)
        for i in range(res.replicas)
    ]
    return WorkerGroup(role, workers, pg)
