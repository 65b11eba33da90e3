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
