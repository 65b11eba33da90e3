"""The Serve config and the KubeRay RayService point at code and files that exist, and agree;
every KubeRay manifest in cluster/ passes the KubeRay CRD schema (vendored in tests/fixtures/kuberay)."""

import copy
import functools
import gzip
import importlib
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from mmc_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def check_serve_config(config: dict) -> None:
    (app,) = config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    cfg = load_config(ROOT / app["args"]["config"], app["args"]["overrides"])  # valid keys and values
    if cfg.serve.backend == "hf":
        (deployment,) = app["deployments"]
        assert deployment["name"] == "CriticServer"
        assert deployment["user_config"]["checkpoint"] == cfg.serve.checkpoint
        return
    # vllm: the checkpoint is the LLM deployment's model_source, set through args; no user_config,
    # which the ingress ignores on this backend and Ray Serve LLM's LLMServer has no reconfigure for.
    assert all("user_config" not in d for d in app.get("deployments", []))
    from mmc_ray.serve.llm import llm_config_dict

    llm = llm_config_dict(cfg.serve, cfg.critic)
    assert llm["model_loading_config"] == {"model_id": cfg.serve.served_model, "model_source": cfg.serve.checkpoint}
    assert cfg.critic.device == "cuda" and llm["engine_kwargs"]["limit_mm_per_prompt"]["image"] >= 1


SERVE_CONFIGS = sorted((ROOT / "cluster").glob("serve-*.yaml"))


def test_serve_configs_cover_both_backends():
    backends = set()
    for path in SERVE_CONFIGS:
        (app,) = yaml.safe_load(path.read_text())["applications"]
        backends.add(load_config(ROOT / app["args"]["config"], app["args"]["overrides"]).serve.backend)
    assert backends == {"hf", "vllm"}


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_is_deployable(path):
    check_serve_config(yaml.safe_load(path.read_text()))


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


# --- KubeRay CRD schemas: what the API server would reject or silently prune, caught without a cluster ---

KUBERAY_SCHEMAS = ROOT / "tests" / "fixtures" / "kuberay"  # see its README.md; refresh.py regenerates them
KUBERAY_API_VERSION = "ray.io/v1"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# The CRD says only `metadata: {type: object}` (the API server checks ObjectMeta itself): a loose stand-in
# that checks what manifests set, and lets every other ObjectMeta field through.
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}],
}


def strict(schema: dict) -> dict:
    """A Kubernetes structural schema as plain JSON Schema that fails where the API server rejects or prunes.

    - `x-kubernetes-int-or-string`: an integer or a string, whatever `type` says;
    - `nullable`: null allowed too;
    - an object with `properties` takes no other field (the API server prunes unknown fields, so a
      misspelled field is silently dropped), unless it says `x-kubernetes-preserve-unknown-fields` or has
      its own `additionalProperties`.
    Structural schemas keep every property under properties/items/additionalProperties (anyOf and friends
    only add value checks), so only those are walked.
    """
    out = dict(schema)
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in out:
            out["additionalProperties"] = False
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    return out


def unique_list_entries(validator, list_type, instance, schema):
    """`x-kubernetes-list-type: set|map`: the API server rejects duplicate items (sets) or keys (maps;
    a missing key counts as its default, e.g. a container port's protocol TCP)."""
    if not validator.is_type(instance, "array"):
        return
    seen: dict = {}
    for i, item in enumerate(instance):
        if list_type == "set":
            key = json.dumps(item, sort_keys=True)
        elif list_type == "map" and isinstance(item, dict):
            item_props = schema.get("items", {}).get("properties", {})
            key = tuple((k, item.get(k, item_props.get(k, {}).get("default"))) for k in schema.get("x-kubernetes-list-map-keys", []))
        else:
            continue
        if key in seen:
            yield jsonschema.ValidationError(f"items {seen[key]} and {i} are duplicates in a list-type={list_type} list ({key})")
        seen.setdefault(key, i)


# OpenAPI v3.0 schema objects follow JSON Schema draft 4 (boolean exclusiveMinimum etc.).
KubeValidator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"x-kubernetes-list-type": unique_list_entries})


@functools.cache
def kuberay_validator(kind: str):
    path = KUBERAY_SCHEMAS / f"{kind.lower()}.schema.json.gz"
    assert path.is_file(), f"no vendored KubeRay schema for kind {kind!r}: see {KUBERAY_SCHEMAS / 'README.md'}"
    schema = strict(json.loads(gzip.decompress(path.read_bytes())))
    schema["properties"]["metadata"] = OBJECT_META
    schema["properties"]["apiVersion"] = {"type": "string", "enum": [KUBERAY_API_VERSION]}
    schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    KubeValidator.check_schema(schema)
    return KubeValidator(schema)


def kuberay_errors(doc: dict) -> list[str]:
    errors = kuberay_validator(doc["kind"]).iter_errors(doc)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def kuberay_manifests() -> list:
    """Every ray.io/v1 document of every cluster/*.yaml, so a new manifest is covered without a test edit."""
    found = []
    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("apiVersion", "").startswith("ray.io/"):
                found.append(pytest.param(doc, id=f"{path.name}#{i}:{doc.get('kind')}"))
    return found


def load_kuberay_manifest(kind: str) -> dict:
    (doc,) = [p.values[0] for p in kuberay_manifests() if p.values[0]["kind"] == kind]
    return copy.deepcopy(doc)


def test_cluster_dir_has_kuberay_manifests():
    assert {p.values[0]["kind"] for p in kuberay_manifests()} >= {"RayCluster", "RayJob", "RayService"}


@pytest.mark.parametrize("doc", kuberay_manifests())
def test_kuberay_manifest_matches_the_crd_schema(doc):
    assert doc["apiVersion"] == KUBERAY_API_VERSION, "KubeRay manifests use the v1 API (the vendored schemas)"
    assert kuberay_errors(doc) == []


def cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"]}[doc["kind"]](doc["spec"])


def rename(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


def pod(group: dict) -> dict:
    return group["template"]["spec"]


# (kind, mistake, the error it must produce); each mistake is one the API server would reject or prune.
MISTAKES = [
    pytest.param("RayService", lambda d: rename(cluster_spec(d)["headGroupSpec"], "rayStartParams", "rayStartParam"),
     "spec.rayClusterConfig.headGroupSpec: Additional properties are not allowed ('rayStartParam' was unexpected)", id="misspelled-rayStartParams"),
    pytest.param("RayCluster", lambda d: rename(d["spec"]["workerGroupSpecs"][0], "replicas", "replica"),
     "spec.workerGroupSpecs.0: Additional properties are not allowed ('replica' was unexpected)", id="misspelled-replicas"),
    pytest.param("RayJob", lambda d: rename(d["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
     "spec: Additional properties are not allowed ('shutdownAfterJobFinish' was unexpected)", id="misspelled-shutdownAfterJobFinishes"),
    pytest.param("RayCluster", lambda d: rename(pod(d["spec"]["workerGroupSpecs"][0])["containers"][0], "volumeMounts", "volumeMount"),
     "spec.workerGroupSpecs.0.template.spec.containers.0: Additional properties are not allowed ('volumeMount' was unexpected)", id="misspelled-pod-field"),
    pytest.param("RayJob", lambda d: d.update(specs=d["spec"]),
     "<root>: Additional properties are not allowed ('specs' was unexpected)", id="misspelled-top-level-field"),
    pytest.param("RayCluster", lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas="two"),
     "spec.workerGroupSpecs.0.replicas: 'two' is not of type 'integer'", id="replicas-not-int"),
    pytest.param("RayService", lambda d: cluster_spec(d)["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
     "spec.rayClusterConfig.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'", id="rayStartParams-value-not-string"),
    pytest.param("RayJob", lambda d: d["spec"].update(shutdownAfterJobFinishes="yes"),
     "spec.shutdownAfterJobFinishes: 'yes' is not of type 'boolean'", id="bool-as-string"),
    pytest.param("RayCluster", lambda d: pod(d["spec"]["workerGroupSpecs"][0])["containers"][0]["resources"]["limits"].update(cpu="eight"),
     "spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.cpu: 'eight' does not match", id="quantity-not-a-quantity"),
    pytest.param("RayCluster", lambda d: pod(d["spec"]["headGroupSpec"])["containers"][0]["ports"].append({"containerPort": 6379, "name": "gcs2"}),
     "spec.headGroupSpec.template.spec.containers.0.ports: items 0 and 5 are duplicates in a list-type=map list", id="duplicate-container-port"),
    pytest.param("RayCluster", lambda d: pod(d["spec"]["headGroupSpec"])["containers"][0].pop("name"),
     "spec.headGroupSpec.template.spec.containers.0: 'name' is a required property", id="container-without-name"),
    pytest.param("RayCluster", lambda d: d["metadata"].update(labels={"replicas": 2}),
     "metadata.labels.replicas: 2 is not of type 'string'", id="label-not-string"),
    pytest.param("RayService", lambda d: d["metadata"].update(name="MMC_critic"),
     "metadata.name: 'MMC_critic' does not match", id="name-not-dns1123"),
]


@pytest.mark.parametrize(("kind", "mistake", "expected"), MISTAKES)
def test_kuberay_schema_catches_mistakes(kind, mistake, expected):
    doc = load_kuberay_manifest(kind)
    assert kuberay_errors(doc) == []
    mistake(doc)
    errors = kuberay_errors(doc)
    assert any(e.startswith(expected) for e in errors), errors


def test_kuberay_schema_accepts_what_the_api_server_accepts():
    doc = load_kuberay_manifest("RayCluster")
    group = doc["spec"]["workerGroupSpecs"][0]
    group["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu=96, memory="900Gi")  # int-or-string
    group["template"]["spec"]["containers"][0]["ports"] = [  # same port, two protocols: distinct map keys
        {"containerPort": 5353, "protocol": "UDP"}, {"containerPort": 5353}]
    doc["metadata"].update(namespace="ml", labels={"team": "mmc"}, annotations={"note": "x"}, uid="anything")
    assert kuberay_errors(doc) == []


def containers(node: object) -> list[dict]:
    """Every container spec anywhere in a manifest."""
    if isinstance(node, dict):
        found = [c for c in node.get("containers", []) if isinstance(c, dict)]
        return found + [c for v in node.values() for c in containers(v)]
    return [c for v in node for c in containers(v)] if isinstance(node, list) else []


@pytest.mark.parametrize("doc", kuberay_manifests())
def test_every_node_loads_our_serve_proxy_middleware(doc):
    """Serve runs a proxy on every node: each must answer a lost replica's requests with a JSON 503."""
    from starlette.middleware import Middleware

    from mmc_ray.ray_runtime import SERVE_PROXY_CALLBACK

    name, value = SERVE_PROXY_CALLBACK
    for container in containers(doc["spec"]):
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get(name) == value, f"{container['name']} does not set {name}"
    module, _, attr = value.partition(":")
    assert all(isinstance(m, Middleware) for m in getattr(importlib.import_module(module), attr)())
