"""Where a Ray we start listens: loopback by default, the machine's address when asked."""

import os

from mmc_ray import ray_runtime


def test_a_local_ray_listens_on_loopback_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv(ray_runtime.SINGLE_MACHINE_RAY[0], raising=False)
    monkeypatch.setitem(ray_runtime._CONSOLE, "all_interfaces", False)
    options = ray_runtime.local_ray_options()
    assert options["_node_ip_address"] == options["dashboard_host"] == "127.0.0.1"
    # every process Ray spawns inherits it, and reads it when it imports ray
    assert os.environ[ray_runtime.SINGLE_MACHINE_RAY[0]] == "0"
    from ray._private import ray_constants, services

    assert services.get_node_ip_address() == "127.0.0.1" and not ray_constants.ENABLE_RAY_CLUSTER

    monkeypatch.delenv(ray_runtime.SINGLE_MACHINE_RAY[0])
    ray_runtime.listen_on_all_interfaces(True)
    assert ray_runtime.local_ray_options() == {}
    assert ray_runtime.SINGLE_MACHINE_RAY[0] not in os.environ
