"""Connecting to Ray: an existing cluster when RAY_ADDRESS is set (`ray job submit` sets it),
otherwise a local one sized to this machine."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from mmc_ray.errors import NotEnoughResources


def init_ray() -> None:
    import ray

    # Ray Data logs every operator's state at INFO; our progress bars say what users need.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    # Local runs (tests, the demo, a laptop) skip token auth; clusters keep their own setting.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray Train's controller sees a fit end at its next poll of the workers, every 2 s by default:
    # in a streamed round that wait is on the critical path. Polling is a cheap actor call.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    ray.init(ignore_reinit_error=True)


def require_resources(who: str, need: Mapping[str, float], fix: str,
                      spare: Mapping[str, float] | None = None) -> None:
    """Refuse, naming `fix`, what the Ray cluster cannot hold: Ray would otherwise wait forever for
    it. `spare` is what must stay free beside it (CPU for Ray Data's readers)."""
    import ray

    available = ray.cluster_resources()
    for name, amount in need.items():
        extra = (spare or {}).get(name, 0.0)
        have = available.get(name, 0.0)
        if amount > 0 and amount + extra > have:
            beside = f" plus {extra:g} free beside it" if extra else ""
            raise NotEnoughResources(f"{who}: needs {amount:g} {name} in total{beside} but the Ray cluster "
                                     f"has {have:g}; {fix}")


def actor_pool(size: int):
    """`compute=` for a class-based Ray Data stage: a fixed pool of `size` actors."""
    import ray.data

    return ray.data.ActorPoolStrategy(size=size)
