"""Connecting to Ray: an existing cluster when RAY_ADDRESS is set (`ray job submit` sets it),
otherwise a local one sized to this machine."""

from __future__ import annotations

import logging
import os


def init_ray() -> None:
    import ray

    # Ray Data logs every operator's state at INFO; our progress bars say what users need.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    # Local runs (tests, the demo, a laptop) skip token auth; clusters keep their own setting.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(ignore_reinit_error=True)


def actor_pool(size: int):
    """`compute=` for a class-based Ray Data stage: a fixed pool of `size` actors."""
    import ray.data

    return ray.data.ActorPoolStrategy(size=size)
