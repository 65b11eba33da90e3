"""The critic service with serve.backend=vllm: our ingress composed with a Ray Serve LLM (vLLM)
deployment of the tiny random-weight Qwen2-VL, on the local test Ray bound to 127.0.0.1; on vLLM's CPU
build in the vLLM tier (critic.device=cpu), on CUDA where one is visible.

The app requires a bearer token (every request here sends it, one test checks what happens without).
Random weights: critiques rarely parse, so the checks are on the protocol (status codes, shapes,
versions), not on what the critic says. The LLM replica takes 0.75 CPU and the ingress 0.5, so a
redeploy's new replica fits beside the old one on the 2-CPU test Ray.

Ray Serve LLM's multi-LoRA on the same app (one Serve LLM start, ~60 s on CPU): adapters are published
to an S3 adapter store (moto's S3 server on 127.0.0.1 stands in for S3; its endpoint is set in
tests/vllm_tier/conftest.py), picked by model name, aliased, and hot-swapped under load without a
redeploy. The adapters have random non-zero weights, so each writes its own text: those checks compare
replies (greedy) between names, not what a critic says.
"""

import dataclasses
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from serve_payloads import (
    PROBLEM,
    check_with_the_official_openai_client,
    critique_body,
    free_port,
    replies_across_redeploy,
)

from mmc_ray.config import Config, EngineConfig, ResourcesConfig, ServeConfig, VLLMConfig
from mmc_ray.critique.prompts import critic_messages
from mmc_ray.engine_protocol import GenerationRequest
from mmc_ray.engines.openai import OpenAIEngine
from tests.engines.test_adapters import random_adapter

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TOKEN = "s3cret"
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
def service(ray_local, tiny_vlm_path, tmp_path_factory, s3, adapters):
    from ray import serve

    from mmc_ray.serve.deploy import deploy

    key_file = tmp_path_factory.mktemp("secret") / "key"
    key_file.write_text(TOKEN + "\n")
    serve_cfg = ServeConfig(backend="vllm", checkpoint=str(tiny_vlm_path), port=free_port(), num_cpus=0.5,
                            max_steps=6, max_tokens=64, default_max_tokens=24, graceful_shutdown_timeout_s=120,
                            api_key_file=str(key_file), api_key_env="MMC_TEST_UNSET_KEY", adapter_store=STORE,
                            checkpoint_poll_s=0.5)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    critic = EngineConfig(kind="vllm", device=device, dtype="float32", min_pixels=3136,
                          vllm=VLLMConfig(gpu_memory_utilization=0.3, cpu_kv_cache_gib=1, max_model_len=2048,
                                          max_images_per_prompt=1, max_loras=2, max_lora_rank=8),
                          max_pixels=12544, resources=ResourcesConfig(num_cpus=0.75),
                          adapters=(f"critic-r1={adapters['critic-r1']}",))
    cfg = Config(serve=serve_cfg, critic=critic)
    url = deploy(cfg)
    client = httpx.Client(timeout=300, headers={"Authorization": f"Bearer {TOKEN}"})
    yield {"url": url, "cfg": cfg, "client": client}
    serve.shutdown()


def test_the_bearer_token_is_required(service):
    url = service["url"]
    with httpx.Client(timeout=60) as anonymous:
        assert anonymous.get(f"{url}/healthz").status_code == 200  # probes need no token
        assert anonymous.get(f"{url}/v1/models").status_code == 401
        assert anonymous.post(f"{url}/v1/critique", json=critique_body()).status_code == 401
        wrong = anonymous.post(f"{url}/v1/critique", json=critique_body(), headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401


def test_models_health_and_a_critique(service):
    client, url = service["client"], service["url"]
    assert client.get(f"{url}/healthz").json()["status"] == "ok"
    model, *_ = client.get(f"{url}/v1/models").json()["data"]
    assert model["id"] == "mmc-critic" and model["version"] >= 1
    assert model["checkpoint"] == service["cfg"].serve.checkpoint
    reply = client.post(f"{url}/v1/critique", json=critique_body())
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["model"] == "mmc-critic" and 0 < data["usage"]["completion_tokens"] <= 16
    assert data["usage"]["prompt_tokens"] > 20 and (data["critique"] is None) == bool(data["parse_error"])


def test_chat_completions_through_the_openai_engine(service):
    engine = OpenAIEngine(f"{service['url']}/v1", "mmc-critic", api_key=TOKEN)
    request = GenerationRequest(messages=critic_messages(PROBLEM, ["a", "b"], "3"), images=(PROBLEM.image,),
                                n=2, max_new_tokens=8, temperature=1.0, seed=1, logprobs=True)
    (result,) = engine.generate([request])
    assert [c.finish_reason for c in result.completions] != ["error", "error"], result
    assert all(c.logprobs is not None and all(lp <= 0 for lp in c.logprobs) for c in result.completions)
    assert result.prompt_tokens > 20


def test_score_steps_from_prompt_logprobs(service):
    reply = service["client"].post(f"{service['url']}/v1/score_steps", json=critique_body(steps=["a", "b", "c"]))
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert len(data["step_sound"]) == len(data["first_wrong_step"]) == 3
    assert data["p_correct"] + sum(data["first_wrong_step"]) == pytest.approx(1.0)
    assert data["step_sound"] == sorted(data["step_sound"], reverse=True)


def test_limits_and_auth_free_health_are_the_cpu_paths(service):
    client, url = service["client"], service["url"]
    reply = client.post(f"{url}/v1/critique", json=critique_body(steps=[f"s{i}" for i in range(7)]))
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "steps"


def test_the_official_openai_client_streams_and_gets_openai_errors(service):
    check_with_the_official_openai_client(f"{service['url']}/v1", api_key=TOKEN)


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
    # on vLLM's CPU build the base goes through a zero adapter published beside the adapters
    for folder in ("critic-r1", *(() if torch.cuda.is_available() else ("zero-base",))):
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


def test_hot_swap_by_redeploy_fails_no_request(service, tmp_path):
    from mmc_ray.serve.deploy import deploy

    client, url, cfg = service["client"], service["url"], service["cfg"]
    before = client.get(f"{url}/v1/models").json()["data"][0]
    new_checkpoint = str(shutil.copytree(before["checkpoint"], tmp_path / "critic-v2"))
    statuses = [r.status_code for r in replies_across_redeploy(
        client, url,
        redeploy=lambda: deploy(dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve,
                                                                                  checkpoint=new_checkpoint))),
        swapped=lambda: client.get(f"{url}/v1/models").json()["data"][0]["checkpoint"] == new_checkpoint,
        timeout_s=300, every_s=1, never="the LLM deployment never rolled out the new checkpoint")]
    assert statuses == [200] * len(statuses)
    after = client.get(f"{url}/v1/models").json()["data"][0]
    assert after["version"] == before["version"] + 1
