"""Node-failure scenarios on a multi-node local Ray (`ray.cluster_utils.Cluster`: a head and worker
nodes as separate raylets on this machine), each run in its own process by tests/ray/test_node_failure.py
(the test session's own Ray is a single node). Roles are kept on their own nodes by custom resources,
as on a real cluster where they never share one. Prints one JSON line with what it measured.

    python tests/ray/multinode.py search|annotate OUT_DIR
    python tests/ray/multinode.py serve OUT_DIR TINY_VLM
    python tests/ray/multinode.py train OUT_DIR DATASET TRAIN_CONFIG_JSON

`run_scenario` runs one from a test; `registered_step` is shared with tests/ray/test_train.py.
"""

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster

from mmc_ray.config import EngineConfig, ResourcesConfig, SearchConfig, SimulatorConfig
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.layout import tree_shards
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.train.checkpoints import STATE_FILE, latest_checkpoint
from mmc_ray.workers.dispatch import RayDispatcher, RetryPolicy
from mmc_ray.workers.group import create_worker_group
from mmc_ray.workers.role_worker import PolicyWorker

POLICY_NODE, TRAIN_NODE = "policy_node", "train_node"


def run_scenario(name: str, out: Path, *extra: str) -> dict:
    """One scenario in its own process (the test session's own Ray is a single node): what it measured."""
    proc = subprocess.run([sys.executable, __file__, name, str(out), *extra], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parent(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ...", and comm may hold spaces or parentheses
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def train_worker_pids(descending_from: int | None = None) -> list[int]:
    """Ray Train workers on this machine; with `descending_from`, only the processes below that one
    (a local Ray started by this test process), so a benchmark's fit running beside is never hit."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                pid = ancestor = int(proc.name)
                while descending_from is not None and ancestor not in (descending_from, 0, 1):
                    ancestor = _parent(ancestor)
                if descending_from is None or ancestor == descending_from:
                    pids.append(pid)
        except OSError:
            continue
    return pids


def registered_step(out: Path) -> int:
    """The step of the newest checkpoint that both our marker and Ray Train's controller count: the
    controller takes reports when it polls (every 2 s), so a worker killed sooner loses its report."""
    newest = latest_checkpoint(out)
    snapshots = list(out.glob("ray-train-*/checkpoint_manager_snapshot.json"))
    if newest is None or not snapshots:
        return 0
    latest = json.loads(snapshots[0].read_text()).get("latest_checkpoint_result") or {}
    return min(json.loads((newest / STATE_FILE).read_text())["step"], latest.get("metrics", {}).get("step", 0))


def when_checkpoint_registered(out: Path, step: int, act) -> list[float]:
    """Run `act()` from a thread once a checkpoint at `step` is registered (while a fit runs in this
    process); returns the list the time it acted is put in."""
    acted: list[float] = []

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                reached = registered_step(out) >= step
            except (OSError, ValueError):  # a file caught mid-write
                reached = False
            if reached:
                act()
                acted.append(time.time())
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return acted


def start_cluster(worker_resources: dict, head_cpus: int = 1, workers: int = 2) -> tuple[Cluster, list]:
    """A head and `workers` worker nodes (1 CPU and `worker_resources` each), connected."""
    from mmc_ray.ray_runtime import LOOPBACK, SERVE_PROXY_CALLBACK, local_ray_options

    os.environ.setdefault(*SERVE_PROXY_CALLBACK)  # as init_ray does for a Ray it starts
    local_ray_options()  # every node on loopback, as a Ray our commands start
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False,
                                                            "node_ip_address": LOOPBACK})
    nodes = [cluster.add_node(num_cpus=1, resources=dict(worker_resources), node_ip_address=LOOPBACK)
             for _ in range(workers)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, nodes


def stop_cluster(cluster: Cluster) -> None:
    ray.shutdown()
    cluster.shutdown()


def tree_ids(folder: Path, prefix: str = "trees", key: str = "problem_id") -> list[str]:
    return [i for s in shard_paths(folder, prefix) for i in pq.read_table(s, columns=[key])[key].to_pylist()]


def node_of(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()), timeout=60)


def search_losing_a_node(out: Path) -> dict:
    """Two policy workers, one per worker node; the node of the first is killed (no graceful
    shutdown) once the search has sent a few batches. Its worker cannot come back (no other node
    has the policy resource): the search must finish on the other, losing and duplicating nothing."""
    cluster, nodes = start_cluster({POLICY_NODE: 1})
    cfg = EngineConfig(kind="simulated", simulator=SimulatorConfig(observe_error_rate=0.25, call_latency_s=0.05),
                       resources=ResourcesConfig(replicas=2, num_cpus=0.5, node_resource=POLICY_NODE,
                                                 max_restarts=3, restart_wait_s=120))
    group = create_worker_group(PolicyWorker, cfg)
    worker_nodes = [node_of(w) for w in group.workers]
    victim = next(n for n in nodes if n.node_id == worker_nodes[0])
    problems = list(generate_problems(24, seed=9))
    search = SearchConfig(num_simulations=6, expansion_width=3, rollouts_per_node=2, max_active_trees=12,
                          requests_per_call=8, shard_size=6)

    class NodeKillingDispatcher(RayDispatcher):
        submitted = 0
        killed_at: float | None = None

        def submit(self, batch):
            ticket = super().submit(batch)
            NodeKillingDispatcher.submitted += 1
            if NodeKillingDispatcher.submitted == 6:
                cluster.remove_node(victim, allow_graceful=False)
                NodeKillingDispatcher.killed_at = time.time()
            return ticket

    started = time.time()
    try:
        summary = search_to_dir(problems, NodeKillingDispatcher(group.workers), search, out, progress=False,
                                retry=RetryPolicy.for_role(cfg.resources))
    finally:
        group.shutdown()
        stop_cluster(cluster)
    rows = [r for s in tree_shards(out) for r in pq.read_table(s, columns=["problem_id", "failed_generations"])
            .to_pylist()]
    return {"workers_on_distinct_nodes": len(set(worker_nodes)) == 2, "node_killed": NodeKillingDispatcher.killed_at
            is not None, "trees": len(rows), "unique_trees": len({r["problem_id"] for r in rows}),
            "problems": len(problems), "failed_generations": sum(r["failed_generations"] for r in rows),
            "failed_batches": summary.failed_batches, "worker_restarts": summary.worker_restarts,
            "seconds": round(time.time() - started, 1)}


def annotate_losing_a_node(out: Path) -> dict:
    """Rule annotation through Ray Data on the cluster; a worker node is killed as soon as the first
    outcome block reaches the driver, with the other blocks running or queued on the nodes. Ray Data
    reruns what the node held: the dataset must hold each pair once, as annotating locally does."""
    from mmc_ray.config import Config
    from mmc_ray.engines.simulated import SimulatedActorEngine
    from mmc_ray.stages import annotate
    from mmc_ray.store.dataset import finished_pair_ids
    from mmc_ray.workers.dispatch import LocalDispatcher

    trees = out / "trees"
    search_to_dir(list(generate_problems(48, seed=8)), LocalDispatcher(SimulatedActorEngine(SimulatorConfig())),
                  SearchConfig(num_simulations=6, expansion_width=3, rollouts_per_node=2, shard_size=4), trees,
                  progress=False)
    local = annotate.annotate_to_dir(trees, out / "local", Config(), local=True, progress=False)
    cluster, nodes = start_cluster({})
    ray_outcomes, killed = annotate._ray_outcomes, []

    def outcomes_losing_a_node(*args):
        for table in ray_outcomes(*args):
            yield table
            if not killed:
                cluster.remove_node(nodes[0], allow_graceful=False)
                killed.append(time.time())

    annotate._ray_outcomes = outcomes_losing_a_node
    started = time.time()
    try:
        cfg = Config()
        streamed = annotate.annotate_to_dir(trees, out / "ray", dataclasses.replace(
            cfg, annotate=dataclasses.replace(cfg.annotate, trees_per_batch=2)), progress=False)
    finally:
        stop_cluster(cluster)
    pair_ids = [i for split in ("train", "validation", "test")
                for i in tree_ids(out / "ray" / "data", split, "pair_id")]
    return {"node_killed": bool(killed), "tree_shards": len(shard_paths(trees, "trees")),
            "critiques": streamed.critiques, "drops": streamed.drops, "local_critiques": local.critiques,
            "local_drops": local.drops, "unique_critiques": len(set(pair_ids)), "rows": len(pair_ids),
            "same_pairs_as_local": finished_pair_ids(out / "ray") == finished_pair_ids(out / "local"),
            "seconds": round(time.time() - started, 1)}


def serve_losing_a_node(out: Path, model: str) -> dict:
    """The critic service with its one replica on a worker node (the head takes no replica), under
    load from `OpenAIEngine` and plain clients; the replica's node is killed. Serve starts a replica
    on the other node; the requests the lost one held are sent there again by Serve or get a JSON 503,
    which the engine retries until answered."""
    import httpx
    from ray import serve
    from serve_payloads import replies_across_a_kill

    from mmc_ray.config import Config, ServeConfig
    from mmc_ray.critique.prompts import critic_messages
    from mmc_ray.engine_protocol import GenerationRequest
    from mmc_ray.engines.openai import OpenAIEngine
    from mmc_ray.serve.deploy import deploy

    cluster, nodes = start_cluster({}, head_cpus=0)
    port = 18000 + os.getpid() % 1000
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})  # one machine, one port
    cfg = Config(serve=ServeConfig(checkpoint=str(model), port=port, num_cpus=0.5, max_batch_size=8),
                 critic=EngineConfig(kind="hf", device="cpu", dtype="float32", min_pixels=3136, max_pixels=12544))
    url = deploy(cfg)
    client = httpx.Client(timeout=120)
    problem = next(generate_problems(1, seed=4))
    body = {"question": problem.question, "steps": ["Count: 3.", "So 3."], "answer": "3", "max_tokens": 200}
    before = client.get(f"{url}/healthz").json()
    victim = next(n for n in nodes if n.node_id == before["node"])
    engine = OpenAIEngine(f"{url}/v1", "mmc-critic", max_retries=8, retry_backoff_s=1.0)
    request = GenerationRequest(messages=critic_messages(problem, ["a", "b"], "3"), images=(problem.image,),
                                max_new_tokens=200)
    started = time.time()
    try:
        replies, results, open_across = replies_across_a_kill(
            client, url, body, engine, request, kill=lambda: cluster.remove_node(victim, allow_graceful=False))
        # The killed node's worker processes die a moment after its raylet, and until then the old
        # replica may still answer: wait (bounded) for the replica Serve starts in its place.
        deadline, after = time.monotonic() + 60, {"pid": before["pid"]}
        while after.get("pid") in (None, before["pid"]) and time.monotonic() < deadline:
            reply = client.get(f"{url}/healthz")
            after = reply.json() if reply.status_code == 200 else {}
            time.sleep(0.5)
    finally:
        serve.shutdown()
        stop_cluster(cluster)
    failed = [r for r in replies if r.status_code != 200]
    return {"replica_on_a_worker_node": victim is not None, "open_across_the_kill": open_across,
            "plain_statuses": [r.status_code for r in replies],
            "failed_are_json_503": all(r.status_code == 503 and r.json()["error"]["code"] == "replica_lost"
                                       for r in failed),
            "engine_errors": sum(c.finish_reason == "error" for r in results for c in r.completions),
            "engine_retries": engine.retries, "new_replica": after.get("pid") not in (None, before["pid"]),
            "seconds": round(time.time() - started, 1)}


def node_of_pid(nodes: list, pid: int):
    """The node whose raylet started process `pid` (raylets fork their workers)."""
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return next(n for n in nodes if n.all_processes["raylet"][0].process.pid == parent)


def train_losing_a_node(out: Path, dataset: str, train_json: str) -> dict:
    """Two training workers on two of three worker nodes (each holds one unit of the train resource;
    the third is spare capacity, as an autoscaler would add). Once the step-4 checkpoint is registered,
    the node of one worker is killed: Ray Train (`train.max_failures`) starts the workers again from
    the newest checkpoint on the nodes left, and the fit ends with the losses of a fit never stopped."""
    from mmc_ray.config import Config, TrainConfig
    from mmc_ray.config.sections import LoraConfig
    from mmc_ray.train.trainer import train

    cluster, nodes = start_cluster({TRAIN_NODE: 1}, workers=3)
    fields = json.loads(train_json)  # a TrainConfig as dataclasses.asdict wrote it
    lora = fields.pop("lora")
    tcfg = TrainConfig(**{**fields, "node_resource": TRAIN_NODE},
                       lora=LoraConfig(**{**lora, "target_modules": tuple(lora["target_modules"])}))
    victims = []

    def kill_a_training_node() -> None:  # from the watching thread: removing a node needs no main thread
        victims.append(node_of_pid(nodes, train_worker_pids()[0]))
        cluster.remove_node(victims[0], allow_graceful=False)

    killed = when_checkpoint_registered(out / "run", 4, kill_a_training_node)
    started = time.time()
    try:
        summary = train(dataclasses.replace(Config(), train=tcfg), Path(dataset), out / "run", progress=False)
    finally:
        stop_cluster(cluster)
    return {"node_killed": bool(killed), "step": summary.metrics["step"],
            "resumed_from_step": summary.metrics.get("resumed_from_step"), "losses": summary.losses,
            "seconds": round(time.time() - started, 1)}


SCENARIOS = {"search": search_losing_a_node, "annotate": annotate_losing_a_node, "serve": serve_losing_a_node,
             "train": train_losing_a_node}

if __name__ == "__main__":
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a loopback-only test cluster (see tests/conftest.py)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    scenario, out_dir, *extra = sys.argv[1:]
    print(json.dumps(SCENARIOS[scenario](Path(out_dir), *extra)), flush=True)
