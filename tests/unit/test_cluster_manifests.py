"""The Serve config and the KubeRay RayService point at code and files that exist, and agree."""

import importlib
from pathlib import Path

import yaml

from mmc_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def check_serve_config(config: dict) -> None:
    (app,) = config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    cfg = load_config(ROOT / app["args"]["config"], app["args"]["overrides"])  # valid keys and values
    (deployment,) = app["deployments"]
    assert deployment["name"] == "CriticServer"
    assert deployment["user_config"]["checkpoint"] == cfg.serve.checkpoint


def test_serve_config_is_deployable():
    check_serve_config(yaml.safe_load((ROOT / "cluster" / "serve-critic.yaml").read_text()))


def test_rayservice_embeds_a_deployable_serve_config():
    service = yaml.safe_load((ROOT / "cluster" / "rayservice-critic.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    check_serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert service["spec"]["rayClusterConfig"]["rayVersion"] in (ROOT / "constraints.txt").read_text()


def gpu_groups(cluster_spec: dict) -> list[dict]:
    return [g for g in cluster_spec["workerGroupSpecs"]
            if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]


def check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] in (ROOT / "constraints.txt").read_text()
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = gpu_groups(spec)
    assert groups, "no GPU worker group"
    for group in groups:
        pod = group["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts["dshm"] == "/dev/shm" and volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert int(group["rayStartParams"]["object-store-memory"]) > 0
        assert set(mounts) <= set(volumes)


def test_raycluster_has_gpu_groups_with_shared_memory():
    cluster = yaml.safe_load((ROOT / "cluster" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    check_cluster_spec(cluster["spec"])


def test_rayjob_runs_an_existing_entrypoint_with_an_existing_config():
    job = yaml.safe_load((ROOT / "cluster" / "rayjob-pipeline.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    words = spec["entrypoint"].split()
    assert (ROOT / words[1]).is_file()
    load_config(ROOT / words[words.index("--config") + 1])
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["HF_HUB_OFFLINE"] == "1"
    check_cluster_spec(spec["rayClusterSpec"])
