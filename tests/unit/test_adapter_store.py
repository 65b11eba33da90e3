"""Publishing adapters to the store Ray Serve LLM loads them from (serve.backend=vllm), here a local
folder through the same pyarrow filesystem layer (file://) that talks to s3:// in production."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmc_ray.config import ConfigError, EngineConfig, ServeConfig
from mmc_ray.config.adapter_names import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from mmc_ray.errors import BadInput, MissingInput
from mmc_ray.serve.adapter_store import ZERO_BASE, publish, publish_all, published_critic


def adapter(folder, seed):
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    save_file({"m.lora_A.weight": torch.randn(2, 4), "m.lora_B.weight": torch.randn(4, 2)},
              folder / ADAPTER_WEIGHTS)
    (folder / ADAPTER_CONFIG).write_text(json.dumps({"r": 2, "peft_type": "LORA"}))
    return folder


@pytest.fixture
def store(tmp_path):
    (tmp_path / "store").mkdir()
    return (tmp_path / "store").as_uri()


def test_publish_copies_the_adapter_under_its_name_and_again_is_a_no_op(tmp_path, store):
    source = adapter(tmp_path / "r1", seed=1)
    uri = publish(store, "critic-r1", source)
    assert uri == f"{store}/critic-r1"
    copied = tmp_path / "store" / "critic-r1"
    assert (copied / ADAPTER_WEIGHTS).read_bytes() == (source / ADAPTER_WEIGHTS).read_bytes()
    assert publish(store, "critic-r1", source) == uri


def test_a_name_is_an_immutable_version(tmp_path, store):
    publish(store, "critic-r1", adapter(tmp_path / "r1", seed=1))
    with pytest.raises(BadInput, match="immutable"):
        publish(store, "critic-r1", adapter(tmp_path / "other", seed=2))


def test_what_is_not_an_exported_adapter_or_not_a_name_is_refused(tmp_path, store):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInput, match=ADAPTER_CONFIG):
        publish(store, "critic-r1", tmp_path / "empty")
    with pytest.raises(BadInput, match="adapter name"):
        publish(store, "../escape", adapter(tmp_path / "r1", seed=1))


def test_on_cpu_the_base_is_published_as_a_zero_adapter(tmp_path, store):
    source = adapter(tmp_path / "r1", seed=1)
    uris = publish_all(store, {"critic-r1": str(source)}, zero_base=True)
    assert uris == {"critic-r1": f"{store}/critic-r1"}
    zero = load_file(tmp_path / "store" / ZERO_BASE / ADAPTER_WEIGHTS)
    assert zero["m.lora_B.weight"].abs().sum() == 0  # applied, it changes nothing
    assert torch.equal(zero["m.lora_A.weight"], load_file(source / ADAPTER_WEIGHTS)["m.lora_A.weight"])
    # already in the store: taken as it is
    assert publish_all(store, uris, zero_base=True) == uris


def test_the_served_critic_names_its_adapters_by_their_store_uris(tmp_path, store):
    source = adapter(tmp_path / "r1", seed=1)
    critic = EngineConfig(kind="vllm", device="cuda", adapters=(f"critic-r1={source}",), adapter="critic-r1")
    # file:// stands in for the cloud here; the config itself takes cloud folders only
    published = published_critic(SimpleNamespace(adapter_store=store), critic)
    assert published.adapters == (f"critic-r1={store}/critic-r1",) and published.adapter == "critic-r1"
    assert not (tmp_path / "store" / ZERO_BASE).exists()  # on GPUs the base needs no stand-in


def test_the_config_takes_cloud_folders_only():
    assert ServeConfig(adapter_store="s3://bucket/critics").adapter_store == "s3://bucket/critics"
    with pytest.raises(ConfigError, match="adapter_store"):
        ServeConfig(adapter_store="/local/folder")
