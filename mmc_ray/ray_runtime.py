"""Connecting to Ray: an existing cluster when RAY_ADDRESS is set (`ray job submit` sets it),
otherwise a local one sized to this machine."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from mmc_ray.errors import NotEnoughResources

# Whether worker output (Ray actors' stdout/stderr, Ray Data's progress lines) reaches the console;
# `mmc-ray` turns it off unless -v (see `quiet_workers`). Where the local Ray keeps its logs.
_CONSOLE: dict[str, object] = {"workers_to_console": True, "session_dir": None, "all_interfaces": False}
LOOPBACK = "127.0.0.1"  # where every listener of a Ray we start binds
# Ray 2.60 gives its node the machine's address on Linux, even when told 127.0.0.1, unless this is
# off (the single-machine path Windows and macOS take): then the node address is loopback, and its
# GCS, raylet, workers, agents and metrics bind there. Read when `ray` is imported, by every
# process Ray spawns (they inherit the environment).
SINGLE_MACHINE_RAY = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Serve's proxy wraps itself in these middlewares at start (mmc_ray.serve.proxy_errors: a JSON 503
# for a request whose replica was lost); on a cluster the head's environment sets it (cluster/*.yaml).
SERVE_PROXY_CALLBACK = ("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "mmc_ray.serve.proxy_errors:middlewares")


def quiet_workers(quiet: bool) -> None:
    """Keep worker chatter (library warnings, banners, Ray Data's operator progress) out of the
    console: it stays in the Ray session's log files (`ray_logs_dir`). Call before `init_ray`."""
    _CONSOLE["workers_to_console"] = not quiet


def listen_on_all_interfaces(enabled: bool) -> None:
    """Let a Ray we start listen on the machine's address (other machines may join it) instead of
    loopback only. Call before `init_ray`."""
    _CONSOLE["all_interfaces"] = enabled


def local_ray_options() -> dict[str, str]:
    """`ray.init` keywords for a Ray this process starts on this machine: every listener on loopback
    (unless `listen_on_all_interfaces`), set here for the driver and, through the environment, for
    every process Ray spawns. The one place that decides where a local Ray listens."""
    if _CONSOLE["all_interfaces"]:
        return {}
    os.environ[SINGLE_MACHINE_RAY[0]] = SINGLE_MACHINE_RAY[1]
    from ray._private import ray_constants

    # `ray` may have been imported before the variable was set: the driver reads the flag from here.
    ray_constants.ENABLE_RAY_CLUSTER = False
    return {"_node_ip_address": LOOPBACK, "dashboard_host": LOOPBACK}


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
    # A Ray we start listens on loopback only and keeps Ray's token auth (on by default for a local
    # Ray since 2.59). A cluster (RAY_ADDRESS: `ray job submit`, KubeRay) keeps its own settings.
    local = not os.environ.get("RAY_ADDRESS")
    if local:  # the raylet passes its environment to Serve's proxy
        os.environ.setdefault(*SERVE_PROXY_CALLBACK)
    context = ray.init(ignore_reinit_error=True, log_to_driver=to_console,
                       **(local_ray_options() if local else {}))
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
