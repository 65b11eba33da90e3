"""Nobody let in: a Ray that mmc-ray starts (`ray_runtime.init_ray`) listens on loopback only, in every
one of its processes (GCS, raylet, agents, workers, metrics), keeps Ray's token auth on, and so does
`mmc-ray serve` with Serve running. The one listener Ray 2.60 will not move is the Serve replica's
inter-deployment gRPC server (hard-coded to `[::]:0` in `serve/_private/replica.py`): it is named
here as the exception, and a call to it without Ray's token is refused."""

import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from serve_payloads import free_port

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux address path")]

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
REPLICA = "ServeReplica"  # the process title of a Serve replica (ray::ServeReplica:app:deployment)


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback seen through IPv6
    return (mapped or ip).is_loopback


def listeners(root: psutil.Process) -> list[tuple[str, int, str]]:
    """(address, port, process title) of every listening TCP socket of `root` and its descendants:
    all of a Ray it started (GCS, raylet, agents, workers)."""
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            title = " ".join(proc.cmdline())[:120]
            found += [(c.laddr.ip, c.laddr.port, title) for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _env(home: Path) -> dict[str, str]:
    """The user's environment as a fresh shell has it: token auth on (Ray's default), no cluster,
    Ray's token under a throwaway HOME."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    return {**env, "HOME": str(home)}


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C (the command shuts Serve and its Ray down), then whatever of its Ray is left."""
    family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(family, timeout=30)
    for leftover in alive:
        leftover.kill()


def test_a_ray_we_start_listens_on_loopback_only_and_keeps_token_auth(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", STARTS_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path), start_new_session=True)
    try:
        line = proc.stdout.readline().split()
        assert len(line) == 2, proc.stderr.read() if proc.poll() is not None else line
        gcs, dashboard = line
        assert gcs.rsplit(":", 1)[0] == "127.0.0.1", gcs
        opened = listeners(psutil.Process(proc.pid))
        ports = {port for _, port, _ in opened}
        assert int(gcs.rsplit(":", 1)[1]) in ports and int(dashboard.rsplit(":", 1)[1]) in ports
        assert len(opened) >= 8, opened  # GCS, raylet, object manager, agents, a worker: all of them looked at
        exposed = [s for s in opened if not _is_loopback(s[0])]
        assert not exposed, exposed
        with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no answer
            urllib.request.urlopen(f"http://{dashboard}/api/version", timeout=10)
        assert refused.value.code in (401, 403)
    finally:
        proc.stdin.close()  # the script ends, and its Ray with it
        _stop(proc)


def test_mmc_ray_serve_listens_on_loopback_but_for_the_replicas_token_guarded_grpc(tmp_path, tiny_vlm_path):
    import grpc

    port = free_port()
    cli = Path(sys.executable).parent / "mmc-ray"
    proc = subprocess.Popen([str(cli), "serve", "--checkpoint", str(tiny_vlm_path), "--port", str(port),
                             "critic.max_pixels=12544", "serve.num_cpus=0.5"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path), start_new_session=True)
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, proc.stderr.read()[-4000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except OSError:
                assert time.time() < deadline, "the service did not come up in 240 s"
                time.sleep(1)
        opened = listeners(psutil.Process(proc.pid))
        assert port in {p for _, p, _ in opened}
        exposed = [s for s in opened if not _is_loopback(s[0])]
        # The exception, exactly: one listener on every interface per replica, in the replica itself.
        replicas = {title for _, _, title in opened if REPLICA in title}
        assert replicas and len(exposed) == len(replicas), exposed
        assert all(REPLICA in title for _, _, title in exposed), exposed
        for _, grpc_port, _ in exposed:  # without Ray's token the replica answers nothing
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest",
                                           request_serializer=lambda b: b, response_deserializer=lambda b: b)
                with pytest.raises(grpc.RpcError) as refused:
                    call(b"", timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value
    finally:
        _stop(proc)
