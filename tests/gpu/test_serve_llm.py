"""The critic service with serve.backend=vllm on a CUDA device: our ingress composed with a Ray Serve LLM
(vLLM) deployment of the tiny random-weight Qwen2-VL, on a local Ray Serve bound to 127.0.0.1.

Skipped, with the reason shown, where vLLM (with Ray Serve LLM) or CUDA is missing. Random weights:
critiques rarely parse, so the checks are on the protocol (status codes, shapes, versions), not on
what the critic says.
"""

import dataclasses
import shutil

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'mmc-ray[gpu]' on a CUDA machine)")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("vLLM needs a CUDA device; none is visible", allow_module_level=True)
pytest.importorskip("ray.serve.llm", reason="Ray Serve LLM does not import here (ray[llm] and vLLM versions)")

import httpx  # noqa: E402
from serve_payloads import PROBLEM, critique_body, free_port, statuses_across_redeploy  # noqa: E402

from mmc_ray.config import Config, EngineConfig, ServeConfig  # noqa: E402
from mmc_ray.critique.prompts import critic_messages  # noqa: E402
from mmc_ray.engines.base import GenerationRequest  # noqa: E402
from mmc_ray.engines.openai import OpenAIEngine  # noqa: E402


@pytest.fixture(scope="module")
def service(tiny_vlm_path):
    import ray
    from ray import serve

    from mmc_ray.serve.deploy import deploy

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}})
    serve_cfg = ServeConfig(backend="vllm", checkpoint=str(tiny_vlm_path), port=free_port(), num_cpus=0.5,
                            max_steps=6, max_tokens=64, default_max_tokens=24, graceful_shutdown_timeout_s=120)
    critic = EngineConfig(kind="vllm", device="cuda", dtype="float32", gpu_memory_utilization=0.3,
                          max_model_len=2048, max_images_per_prompt=1, min_pixels=3136, max_pixels=12544)
    cfg = Config(serve=serve_cfg, critic=critic)
    url = deploy(cfg)
    client = httpx.Client(timeout=300)
    yield {"url": url, "cfg": cfg, "client": client}
    serve.shutdown()
    ray.shutdown()


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
    engine = OpenAIEngine(f"{service['url']}/v1", "mmc-critic")
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
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    assert client.post(f"{url}/v1/chat/completions", json=chat).json()["error"]["field"] == "stream"


def test_hot_swap_by_redeploy_fails_no_request(service, tmp_path):
    from mmc_ray.serve.deploy import deploy

    client, url, cfg = service["client"], service["url"], service["cfg"]
    before = client.get(f"{url}/v1/models").json()["data"][0]
    new_checkpoint = str(shutil.copytree(before["checkpoint"], tmp_path / "critic-v2"))
    statuses = statuses_across_redeploy(
        client, url,
        redeploy=lambda: deploy(dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve,
                                                                                  checkpoint=new_checkpoint))),
        swapped=lambda: client.get(f"{url}/v1/models").json()["data"][0]["checkpoint"] == new_checkpoint,
        timeout_s=300, every_s=1, never="the LLM deployment never rolled out the new checkpoint")
    assert statuses == [200] * len(statuses)
    after = client.get(f"{url}/v1/models").json()["data"][0]
    assert after["version"] == before["version"] + 1
