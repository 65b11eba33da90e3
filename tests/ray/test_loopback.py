"""A Ray that mmc-ray starts (`ray_runtime.init_ray`) keeps Ray's token auth on and its dashboard on
loopback. (Ray 2.60's GCS, raylet and worker ports listen on every interface whatever node IP they
are given, so the token is what keeps others out of those.)"""

import ipaddress
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.slow

STARTS_RAY = """
import sys
import ray
from mmc_ray.ray_runtime import init_ray

init_ray()
assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker is up and talking
print(ray.get_runtime_context().gcs_address, ray._private.worker.global_worker.node.address_info.get("webui_url"),
      flush=True)
sys.stdin.read()  # until the test is done looking
"""


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    return str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))


def listening_sockets() -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state on this machine (/proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    address, port = fields[1].split(":")
                    found.add((_address(address), int(port, 16)))
    return found


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket tables")
def test_a_ray_we_start_keeps_token_auth_and_its_dashboard_on_loopback(tmp_path):
    before = listening_sockets()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["HOME"] = str(tmp_path)  # Ray writes its token under ~/.ray: keep the user's untouched
    proc = subprocess.Popen([sys.executable, "-c", STARTS_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        line = proc.stdout.readline().split()
        assert len(line) == 2, proc.stderr.read() if proc.poll() is not None else line
        gcs, dashboard = line
        opened = listening_sockets() - before
        assert any(port == int(gcs.rsplit(":", 1)[1]) for _, port in opened), (gcs, opened)
        dashboard_port = int(dashboard.rsplit(":", 1)[1])
        dashboard_listeners = {a for a, p in opened if p == dashboard_port}
        assert dashboard_listeners and all(ipaddress.ip_address(a).is_loopback for a in dashboard_listeners)
        with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no answer
            urllib.request.urlopen(f"http://{dashboard}/api/version", timeout=10)
        assert refused.value.code in (401, 403)
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
