"""The critic service with serve.backend=vllm: our ingress composed with a Ray Serve LLM (vLLM)
deployment of the tiny random-weight Qwen2-VL, on the local test Ray bound to 127.0.0.1; on vLLM's CPU
build in the vLLM tier (critic.device=cpu), on CUDA where one is visible.

The app requires a bearer token (every request here sends it, one test checks what happens without).
Random weights: critiques rarely parse, so the checks are on the protocol (status codes, shapes,
versions), not on what the critic says. The LLM replica takes 0.75 CPU and the ingress 0.5, so a
redeploy's new replica fits beside the old one on the 2-CPU test Ray.
"""

import dataclasses
import shutil

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

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def service(ray_local, tiny_vlm_path, tmp_path_factory):
    from ray import serve

    from mmc_ray.serve.deploy import deploy

    key_file = tmp_path_factory.mktemp("secret") / "key"
    key_file.write_text(TOKEN + "\n")
    serve_cfg = ServeConfig(backend="vllm", checkpoint=str(tiny_vlm_path), port=free_port(), num_cpus=0.5,
                            max_steps=6, max_tokens=64, default_max_tokens=24, graceful_shutdown_timeout_s=120,
                            api_key_file=str(key_file), api_key_env="MMC_TEST_UNSET_KEY")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    critic = EngineConfig(kind="vllm", device=device, dtype="float32", min_pixels=3136,
                          vllm=VLLMConfig(gpu_memory_utilization=0.3, cpu_kv_cache_gib=1, max_model_len=2048,
                                          max_images_per_prompt=1),
                          max_pixels=12544, resources=ResourcesConfig(num_cpus=0.75))
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
    (model,) = client.get(f"{url}/v1/models").json()["data"]
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
