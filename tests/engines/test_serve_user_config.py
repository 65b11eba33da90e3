"""A Serve config's (RayService) way to swap a round in: the hf backend's replica takes its adapters
and aliases from the deployment's `user_config` (Serve calls `reconfigure` on the running replicas),
checked by the same rules as `mmc-ray adapters`. The replica class is driven directly here, on the
tiny VLM with two random adapters; tests/ray/test_serve.py runs the registry path on a real Serve."""

import pytest

from mmc_ray.config import EngineConfig, ServeConfig
from mmc_ray.errors import BadInput
from tests.engines.test_adapters import PIXELS, _request, _text, random_adapter


@pytest.fixture(scope="module")
def adapters(tiny_vlm_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: str(random_adapter(tiny_vlm_path, root / name, seed)) for name, seed in (("a1", 1), ("a2", 2))}


@pytest.fixture
def replica(monkeypatch, tiny_vlm_path, adapters):
    from mmc_ray.serve import app

    monkeypatch.setattr(app, "follow_registry", lambda poll_s, follow: None)  # no registry outside Serve
    critic = EngineConfig(model_path=str(tiny_vlm_path), max_batch_size=4,
                          adapters=(f"critic-r1={adapters['a1']}",), **PIXELS)
    local = app.LocalCritic(ServeConfig(), critic)
    local.reconfigure({"checkpoint": str(tiny_vlm_path)})
    return local


def test_user_config_loads_a_version_moves_the_alias_and_unloads_the_old(replica, adapters, tiny_vlm_path):
    replica.reconfigure({"checkpoint": str(tiny_vlm_path),
                         "adapters": [f"critic-r1={adapters['a1']}"], "aliases": {"critic": "critic-r1"}})
    assert replica.names.names() == ["critic-r1", "critic"]
    replica.reconfigure({"checkpoint": str(tiny_vlm_path),
                         "adapters": [f"critic-r2={adapters['a2']}"], "aliases": {"critic": "critic-r2"}})
    assert replica.names.names() == ["critic-r2", "critic"] and list(replica.engine.adapters.paths) == ["critic-r2"]
    with replica.names.holding("critic", "mmc-critic") as version:
        assert version == "critic-r2"
        assert _text(replica.engine, _request(version)) == _text(replica.engine, _request("critic-r2"))


@pytest.mark.parametrize(("user_config", "why"), [
    ({"adapters": ["critic-r1=/elsewhere"]}, "immutable"),           # a version reloaded from elsewhere
    ({"adapters": [], "aliases": {"critic": "critic-r9"}}, "no such adapter"),
    ({"adapters": ["not a spec"]}, "NAME=PATH"),
])
def test_a_user_config_change_that_breaks_the_rules_is_refused_whole(replica, user_config, why):
    with pytest.raises(BadInput, match=why):
        replica.reconfigure(user_config)
    assert replica.names.names() == ["critic-r1"]  # still serving what it served


def test_the_default_adapter_is_never_dropped(monkeypatch, tiny_vlm_path, adapters):
    from mmc_ray.serve import app

    monkeypatch.setattr(app, "follow_registry", lambda poll_s, follow: None)
    critic = EngineConfig(model_path=str(tiny_vlm_path), max_batch_size=4, adapter="critic-r1",
                          adapters=(f"critic-r1={adapters['a1']}",), **PIXELS)
    local = app.LocalCritic(ServeConfig(), critic)
    with pytest.raises(BadInput, match="default adapter"):
        local.reconfigure({"checkpoint": str(tiny_vlm_path), "adapters": [f"critic-r2={adapters['a2']}"]})
