"""Connecting to Ray: an existing cluster when RAY_ADDRESS is set (`ray job submit` sets it),
otherwise a local one sized to this machine."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from mmc_ray.errors import NotEnoughResources

# Whether worker output (Ray actors' stdout/stderr, Ray Data's progress lines) reaches the console;
# `mmc-ray` turns it off unless -v (see `quiet_workers`). Where the local Ray keeps its logs.
_CONSOLE: dict[str, object] = {"workers_to_console": True, "session_dir": None}
LOOPBACK = "127.0.0.1"  # where the dashboard of a Ray we start listens
# Serve's proxy wraps itself in these middlewares at start (mmc_ray.serve.proxy_errors: a JSON 503
# for a request whose replica was lost); on a cluster the head's environment sets it (cluster/*.yaml).
SERVE_PROXY_CALLBACK = ("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "mmc_ray.serve.proxy_errors:middlewares")


def quiet_workers(quiet: bool) -> None:
    """Keep worker chatter (library warnings, banners, Ray Data's operator progress) out of the
    console: it stays in the Ray session's log files (`ray_logs_dir`). Call before `init_ray`."""
    _CONSOLE["workers_to_console"] = not quiet


def ray_logs_dir() -> str | None:
    """Where the local Ray this process started keeps every worker's log (None on a cluster)."""
    session = _CONSOLE["session_dir"]
    return None if session is None else os.path.join(str(session), "logs")


def init_ray() -> None:
    import ray

    # Ray Data logs every operator's state at INFO; our progress bars say what users need.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    # Ray Train's controller sees a fit end at its next poll of the workers, every 2 s by default:
    # in a streamed round that wait is on the critical path. Polling is a cheap actor call.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    to_console = bool(_CONSOLE["workers_to_console"])
    # A Ray we start keeps Ray's token auth (on by default for a local Ray since 2.59): Ray 2.60's
    # GCS and raylets listen on every interface whatever node IP they are given, so the token is what
    # keeps others out. Its dashboard listens on loopback only. A cluster keeps its own settings.
    local = not os.environ.get("RAY_ADDRESS")
    if local:  # the raylet passes its environment to Serve's proxy
        os.environ.setdefault(*SERVE_PROXY_CALLBACK)
    context = ray.init(ignore_reinit_error=True, log_to_driver=to_console,
                       **({"dashboard_host": LOOPBACK} if local else {}))
    if local:
        _CONSOLE["session_dir"] = context.address_info.get("session_dir")
    if not to_console:  # our own bars say what the stages do; Ray Data's notes stay in its log file
        import ray.data

        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False


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
