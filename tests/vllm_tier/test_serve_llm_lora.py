"""Ray Serve LLM's multi-LoRA behind our ingress (serve.backend=vllm, vLLM's CPU build): adapters are
published to an S3 adapter store (moto's S3 server on 127.0.0.1 stands in for S3; its endpoint is set
in tests/vllm_tier/conftest.py), picked by model name, aliased, and hot-swapped under load without a
redeploy. The adapters have random non-zero weights, so each writes its own text: the checks compare
replies (greedy) between names, not what a critic says."""

import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_payloads import critique_body, free_port, replies_across_redeploy

from mmc_ray.config import Config, EngineConfig, ResourcesConfig, ServeConfig, VLLMConfig
from tests.engines.test_adapters import random_adapter

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
STORE = "s3://mmc-adapters/critics"


@pytest.fixture(scope="module")
def s3():
    from urllib.parse import urlparse

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    endpoint = urlparse(os.environ["AWS_ENDPOINT_URL"])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=endpoint.port, verbose=False)
    server.start()
    boto3.client("s3").create_bucket(Bucket="mmc-adapters")
    yield boto3.client("s3")
    server.stop()


@pytest.fixture(scope="module")
def adapters(tiny_vlm_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return {name: str(random_adapter(tiny_vlm_path, root / name, seed))
            for name, seed in (("critic-r1", 1), ("critic-r2", 2))}


@pytest.fixture(scope="module")
def service(ray_local, tiny_vlm_path, s3, adapters):
    from ray import serve

    from mmc_ray.serve.deploy import deploy

    serve_cfg = ServeConfig(backend="vllm", checkpoint=str(tiny_vlm_path), port=free_port(), num_cpus=0.5,
                            max_steps=6, max_tokens=64, default_max_tokens=12, adapter_store=STORE,
                            checkpoint_poll_s=0.5, api_key_env="MMC_TEST_UNSET_KEY")
    critic = EngineConfig(kind="vllm", device="cpu", dtype="float32", min_pixels=3136, max_pixels=12544,
                          adapters=(f"critic-r1={adapters['critic-r1']}",),
                          vllm=VLLMConfig(cpu_kv_cache_gib=1, max_model_len=2048, max_images_per_prompt=1,
                                          max_loras=2, max_lora_rank=8),
                          resources=ResourcesConfig(num_cpus=0.75))
    url = deploy(Config(serve=serve_cfg, critic=critic))
    yield {"url": url, "client": httpx.Client(timeout=300)}
    serve.shutdown()


def critique(service, model=None):
    reply = service["client"].post(f"{service['url']}/v1/critique",
                                   json={**critique_body(max_tokens=12), **({"model": model} if model else {})})
    assert reply.status_code == 200, reply.text
    return reply.json()


def wait_for_models(service, done, never: str, timeout_s: float = 30) -> list[str]:
    """The ids /v1/models lists, once `done(ids)` holds (replicas follow the registry every poll)."""
    deadline = time.monotonic() + timeout_s
    while not done(served := [m["id"] for m in service["client"].get(f"{service['url']}/v1/models").json()["data"]]):
        assert time.monotonic() < deadline, never
        time.sleep(0.25)
    return served


def test_deploy_publishes_the_adapter_and_the_cpu_zero_base_to_the_store(service, s3):
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="mmc-adapters")["Contents"]}
    for folder in ("critic-r1", "zero-base"):
        assert {f"critics/{folder}/adapter_config.json", f"critics/{folder}/adapter_model.safetensors"} <= keys
    models = service["client"].get(f"{service['url']}/v1/models").json()["data"]
    assert [(m["id"], m.get("parent")) for m in models] == [("mmc-critic", None), ("critic-r1", "mmc-critic")]


def test_an_adapter_answers_with_its_own_weights_and_the_base_stays_the_base(service):
    base, adapter = critique(service), critique(service, "critic-r1")
    assert (base["model"], adapter["model"]) == ("mmc-critic", "critic-r1")
    assert adapter["text"] != base["text"]  # the adapter was applied (random, non-zero B)
    assert critique(service, "critic-r1")["text"] == adapter["text"]  # greedy: the same again
    # base and adapter requests batched together each keep their own (vLLM's CPU LoRA bug, worked
    # around by the zero adapter the base goes through)
    with ThreadPoolExecutor(6) as pool:
        mixed = list(pool.map(lambda model: critique(service, model), [None, "critic-r1"] * 3))
    assert [r["text"] for r in mixed] == [base["text"], adapter["text"]] * 3


def test_a_new_round_is_hot_swapped_by_alias_under_load(service, adapters):
    from mmc_ray.serve.checkpoints import change_adapters

    client, url = service["client"], service["url"]
    change_adapters("mmc-critic", aliases={"critic": "critic-r1"})
    wait_for_models(service, lambda served: "critic" in served, "the ingress never took the alias")
    r1 = critique(service, "critic-r1")["text"]

    def alias_target():
        reply = client.post(f"{url}/v1/critique", json={**critique_body(max_tokens=12), "model": "critic"})
        return reply.json().get("model") if reply.status_code == 200 else None

    replies = replies_across_redeploy(
        client, url, model="critic",
        redeploy=lambda: change_adapters("mmc-critic", load={"critic-r2": adapters["critic-r2"]},
                                         aliases={"critic": "critic-r2"}),
        swapped=lambda: alias_target() == "critic-r2",
        timeout_s=120, every_s=0.5, never="the alias never moved to critic-r2")
    assert [r.status_code for r in replies] == [200] * len(replies), [r.text for r in replies if r.status_code != 200][:2]
    assert {r.json()["model"] for r in replies} <= {"critic-r1", "critic-r2"}
    r2 = critique(service, "critic")
    assert r2["model"] == "critic-r2" and r2["text"] == critique(service, "critic-r2")["text"] != r1
    change_adapters("mmc-critic", unload=["critic-r1"])
    served = wait_for_models(service, lambda served: "critic-r1" not in served, "critic-r1 was never dropped")
    assert served == ["mmc-critic", "critic-r2", "critic"]
    gone = client.post(f"{url}/v1/critique", json={**critique_body(max_tokens=12), "model": "critic-r1"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def test_adapters_without_a_store_are_refused_at_build(tiny_vlm_path, adapters):
    from mmc_ray.errors import BadInput
    from mmc_ray.serve.app import build_critic_app

    critic = EngineConfig(kind="vllm", device="cpu", adapters=(f"critic-r1={adapters['critic-r1']}",))
    with pytest.raises(BadInput, match="adapter_store"):
        build_critic_app(dataclasses.replace(ServeConfig(backend="vllm"), checkpoint=str(tiny_vlm_path)), critic)
