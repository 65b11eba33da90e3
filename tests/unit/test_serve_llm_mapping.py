"""The vllm serve backend on CPU, without vLLM: our config → Ray Serve LLM's `LLMConfig` arguments, our
requests → chat-completion bodies (critic prompt, image as a data URI), replies → critiques and step
scores, and the ingress's endpoints over a stand-in for the `LLMServer` deployment handle (what a real
one sends back is vLLM's response models, dumped to the JSON these stand-ins write)."""

import asyncio
import base64
import copy
import dataclasses
from types import SimpleNamespace

import pytest
from serve_payloads import B64_IMAGE, PROBLEM

from mmc_ray.config import (
    Config,
    ConfigError,
    EngineConfig,
    ResourcesConfig,
    ServeConfig,
    VLLMConfig,
    load_config,
)
from mmc_ray.critique.prompts import critic_turn
from mmc_ray.critique.schema import parse_critique
from mmc_ray.critique.step_scores import outcome_openings, step_scores
from mmc_ray.engines.openai import parse_response, request_body
from mmc_ray.serve.llm import (
    LLMCallFailed,
    LLMDeploymentClient,
    continuation_logprobs,
    llm_config_dict,
    reply_data,
    score_bodies,
)
from mmc_ray.serve.protocol import CritiqueRequest, RequestRejected, critique_body, critique_generation

GPU_CRITIC = EngineConfig(kind="vllm", device="cuda", dtype="auto", min_pixels=3136, max_pixels=200704,
                          vllm=VLLMConfig(tensor_parallel_size=2, gpu_memory_utilization=0.8, max_model_len=4096,
                                          enable_prefix_caching=True, max_images_per_prompt=1),
                          resources=ResourcesConfig(num_gpus=2))
CRITIQUE_TEXT = ("Verdict: incorrect\nFirst wrong step: 2\nError type: counting\n"
                 "Explanation: Step 2 counts 4 circles; the image has 3.\nCorrection: Count again: 3.")


# --- config → LLMConfig ------------------------------------------------------------------------------

def test_llm_config_dict_maps_the_serve_and_critic_sections():
    serve_cfg = ServeConfig(backend="vllm", checkpoint="/models/critic/hf", served_model="mmc-critic",
                            num_replicas=3, max_ongoing_requests=48, max_batch_size=16)
    config = llm_config_dict(serve_cfg, GPU_CRITIC)
    assert config["model_loading_config"] == {"model_id": "mmc-critic", "model_source": "/models/critic/hf"}
    assert config["engine_kwargs"] == {
        "tensor_parallel_size": 2, "gpu_memory_utilization": 0.8, "max_model_len": 4096,
        "enable_prefix_caching": True, "dtype": "bfloat16", "limit_mm_per_prompt": {"image": 1},
        "mm_processor_kwargs": {"min_pixels": 3136, "max_pixels": 200704}}
    # Ray Serve LLM picks vLLM's executor itself and refuses any other
    assert "distributed_executor_backend" not in config["engine_kwargs"]
    assert config["deployment_config"] == {"num_replicas": 3, "max_ongoing_requests": 48,
                                           "graceful_shutdown_timeout_s": 300.0}
    assert "accelerator_type" not in config


def test_llm_config_dict_autoscales_and_names_the_accelerator_when_asked():
    serve_cfg = ServeConfig(backend="vllm", min_replicas=1, max_replicas=4, target_ongoing_requests=12,
                            accelerator_type="H100")
    config = llm_config_dict(serve_cfg, GPU_CRITIC)
    assert config["deployment_config"]["autoscaling_config"] == {
        "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 12.0}
    assert "num_replicas" not in config["deployment_config"] and config["accelerator_type"] == "H100"


def test_on_cpu_the_llm_deployment_takes_the_critics_cpus_and_its_kv_cache_size():
    cpu_critic = dataclasses.replace(GPU_CRITIC, device="cpu",
                                     vllm=dataclasses.replace(GPU_CRITIC.vllm, tensor_parallel_size=1,
                                                              cpu_kv_cache_gib=3),
                                     resources=ResourcesConfig(num_cpus=1.5))
    config = llm_config_dict(ServeConfig(backend="vllm"), cpu_critic)
    assert config["accelerator_config"] == {"kind": "cpu"}
    assert config["placement_group_config"] == {"bundles": [{"CPU": 1.5}]}
    assert config["deployment_config"]["ray_actor_options"] == {"num_cpus": 0}
    assert config["engine_kwargs"]["kv_cache_memory_bytes"] == 3 * 2**30 and "runtime_env" not in config
    assert "accelerator_config" not in llm_config_dict(ServeConfig(backend="vllm"), GPU_CRITIC)


@pytest.mark.parametrize(("device", "slots"), [("cuda", 4), ("cpu", 5)])
def test_with_an_adapter_store_the_llm_deployment_loads_adapters_from_it(device, slots):
    critic = dataclasses.replace(GPU_CRITIC, device=device, vllm=dataclasses.replace(
        GPU_CRITIC.vllm, tensor_parallel_size=1, max_loras=4, max_lora_rank=16))
    config = llm_config_dict(ServeConfig(backend="vllm", adapter_store="s3://bucket/critics/"), critic)
    # vLLM sizes LoRA at start; on CPU one slot more for the zero adapter the base goes through
    assert config["lora_config"] == {"dynamic_lora_loading_path": "s3://bucket/critics/",
                                     "max_num_adapters_per_replica": slots}
    engine = config["engine_kwargs"]
    assert (engine["enable_lora"], engine["max_loras"], engine["max_lora_rank"]) == (True, slots, 16)
    assert "lora_config" not in llm_config_dict(ServeConfig(backend="vllm"), critic)


def test_ray_serve_llm_accepts_the_llm_config_dict():
    """Ray's own `LLMConfig` model (its config module imports without vLLM) validates the dict; the
    public `ray.serve.llm.LLMConfig` is this class, but importing `ray.serve.llm` needs vLLM."""
    llm_config = pytest.importorskip("ray.llm._internal.serve.core.configs.llm_config")
    cpu_critic = dataclasses.replace(GPU_CRITIC, device="cpu",
                                     vllm=dataclasses.replace(GPU_CRITIC.vllm, tensor_parallel_size=1))
    for serve_cfg, critic in ((ServeConfig(backend="vllm", num_replicas=2), GPU_CRITIC),
                              (ServeConfig(backend="vllm", min_replicas=0, max_replicas=3,
                                           accelerator_type="H100"), GPU_CRITIC),
                              (ServeConfig(backend="vllm"), cpu_critic),
                              (ServeConfig(backend="vllm", adapter_store="s3://bucket/critics"), cpu_critic)):
        config = llm_config.LLMConfig(**llm_config_dict(serve_cfg, critic))
        assert config.model_id == serve_cfg.served_model
        if serve_cfg.adapter_store:
            assert config.lora_config.dynamic_lora_loading_path == "s3://bucket/critics"
        assert config.max_request_context_length == critic.vllm.max_model_len


@pytest.mark.parametrize(("overrides", "message"), [
    (["serve.backend=vllm", "serve.accelerator_type=L4"],  # tiny-cpu.yaml: critic.device=cpu
     "serve.accelerator_type: must be empty with backend=vllm on critic.device=cpu"),
    (["serve.backend=vllm", "critic.device=cuda", "serve.num_gpus=1"], "serve.num_gpus: must be 0 with backend=vllm"),
    (["serve.backend=sglang"], "serve.backend: 'sglang' is not allowed; choose one of ['hf', 'vllm']"),
])
def test_backend_contradictions_fail_at_load(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert message in str(err.value)


def test_backend_defaults_to_hf_and_vllm_loads_on_cuda():
    assert load_config().serve.backend == "hf"
    cfg = load_config(overrides=["serve.backend=vllm", "critic.device=cuda", "serve.accelerator_type=L4"])
    assert (cfg.serve.backend, cfg.serve.accelerator_type) == ("vllm", "L4")


# --- requests and replies -----------------------------------------------------------------------------

def critique_request(**overrides) -> CritiqueRequest:
    body = {"question": PROBLEM.question, "steps": ["Count the shapes: 3.", "So there are 4."], "answer": "4",
            "image": "data:image/png;base64," + B64_IMAGE, "max_tokens": 64}
    return CritiqueRequest(**{**body, **overrides})


def test_a_critique_request_becomes_a_chat_body_with_the_critic_prompt_and_a_data_uri():
    request = critique_generation(critique_request(), ServeConfig())
    body = request_body(request, "mmc-critic")
    (message,) = body["messages"]
    image, text = message["content"]
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/png;base64,")
    assert base64.b64decode(image["image_url"]["url"].partition(",")[2]) == request.images[0]
    (expected,) = critic_turn(PROBLEM.question, True, ["Count the shapes: 3.", "So there are 4."], "4")
    assert text == expected["content"][1]  # the CPU path's prompt, word for word
    assert (body["model"], body["max_tokens"], body["temperature"], body["n"]) == ("mmc-critic", 64, 0.0, 1)
    assert "continue_final_message" not in body  # the critic answers a fresh assistant turn


def chat_reply(text: str, prompt_tokens: int = 321, completion_tokens: int = 40) -> dict:
    """A vLLM ChatCompletionResponse as `model_dump(mode="json")` gives it."""
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "mmc-critic",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                         "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "prompt_logprobs": None}


class Dumped:
    """Stands in for a pydantic response model."""

    def __init__(self, data):
        self.data = data

    def model_dump(self, mode="python"):
        assert mode == "json"
        return copy.deepcopy(self.data)


def test_a_chat_reply_becomes_our_critique():
    result = parse_response(reply_data(Dumped(chat_reply(CRITIQUE_TEXT))), n=1)
    assert result.prompt_tokens == 321 and result.completions[0].completion_tokens == 40
    parsed = parse_critique(result.completions[0].text, num_steps=2)
    body = critique_body(parsed.critique)
    assert (body.verdict, body.first_wrong_step, body.error_type) == ("incorrect", 2, "counting")


@pytest.mark.parametrize(("item", "status"), [
    ({"error": {"message": "prompt too long", "type": "BadRequestError", "param": None, "code": 400}}, 400),
    ({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}, 500),
    ('data: {"choices": []}\n\n', 502),
])
def test_error_replies_raise_with_their_status(item, status):
    with pytest.raises(LLMCallFailed) as err:
        reply_data(item if isinstance(item, str) else Dumped(item))
    assert err.value.status == status


def test_score_bodies_continue_each_opening_with_prompt_logprobs():
    request = critique_generation(critique_request(temperature=0.7), ServeConfig())
    openings = outcome_openings(2)
    bare, *scored = score_bodies(request, openings, "mmc-critic")
    assert "prompt_logprobs" not in bare and "continue_final_message" not in bare
    assert bare["messages"] == request_body(request, "mmc-critic")["messages"]
    assert len(scored) == 3
    for body, opening in zip(scored, openings, strict=True):
        assert body["messages"][:-1] == bare["messages"]
        assert body["messages"][-1] == {"role": "assistant", "content": opening}
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert (body["prompt_logprobs"], body["max_tokens"], body["temperature"], body["n"]) == (0, 1, 0.0, 1)


def logprob_entries(values):
    return [{str(1000 + i): {"logprob": v, "rank": 1, "decoded_token": "t"}} for i, v in enumerate(values)]


def test_continuation_logprobs_sum_the_tokens_after_the_bare_prompt():
    prompt = [-0.5] * 5
    replies = [chat_reply("x", prompt_tokens=6),
               {**chat_reply("x"), "prompt_logprobs": [None, *logprob_entries([*prompt, -1.0, -2.0])]},
               {**chat_reply("x"), "prompt_logprobs": [None, *logprob_entries([*prompt, -0.25])]}]
    assert continuation_logprobs(replies) == [-3.0, -0.25]


@pytest.mark.parametrize("prompt_logprobs", [
    None,                                                               # the server ignored prompt_logprobs
    [None, *logprob_entries([-0.1] * 5)],                               # nothing after the prompt
    [None, *logprob_entries([-0.1] * 5), {"1": {"logprob": -1}, "2": {"logprob": -2}}],  # which is the token?
])
def test_continuation_logprobs_refuse_replies_without_usable_prompt_logprobs(prompt_logprobs):
    replies = [chat_reply("x", prompt_tokens=6), {**chat_reply("x"), "prompt_logprobs": prompt_logprobs}]
    with pytest.raises(ValueError):
        continuation_logprobs(replies)


# --- the ingress over a stand-in LLM deployment ---------------------------------------------------------

class FakeLLMServer:
    """Answers `LLMServer.chat` like vLLM with a byte-per-token 'tokenizer': the bare prompt is
    PROMPT_TOKENS long, and each opening character costs `char_logprob(opening)`."""

    PROMPT_TOKENS = 50

    def __init__(self, error=None):
        self.requests, self.error, self.source = [], error, "/models/critic-v1"
        self.chat = SimpleNamespace(remote=self._chat)
        self.llm_config = SimpleNamespace(remote=self._llm_config)

    def options(self, stream, multiplexed_model_id=""):
        """A handle for one multiplexed model id (a LoRA adapter): what it sends is recorded with it."""
        assert stream is True
        view = SimpleNamespace(chat=SimpleNamespace(
            remote=lambda request: self._chat({**request, "multiplexed": multiplexed_model_id})))
        return view if multiplexed_model_id else self

    @staticmethod
    def char_logprob(opening: str) -> float:
        return -0.01 if "correct\n" in opening and "incorrect" not in opening else -0.05 * (1 + opening.count("2"))

    async def _answer(self, request):
        self.requests.append(request)
        if self.error:
            yield Dumped({"error": {"message": self.error[1], "type": "x", "code": self.error[0]}})
            return
        if request.get("prompt_logprobs") is None:
            yield Dumped(chat_reply(CRITIQUE_TEXT, prompt_tokens=self.PROMPT_TOKENS))
            return
        opening = request["messages"][-1]["content"]
        values = [-0.3] * (self.PROMPT_TOKENS - 1) + [self.char_logprob(opening)] * len(opening)
        yield Dumped({**chat_reply("V"), "prompt_logprobs": [None, *logprob_entries(values)]})

    def _chat(self, request):
        return self._answer(request)

    async def _llm_config(self):
        return SimpleNamespace(model_loading_config=SimpleNamespace(model_source=self.source))


class FakeRegistry:
    def __init__(self):
        self.seen = []
        self.version = SimpleNamespace(remote=self._version)

    async def _version(self, app, checkpoint):
        if checkpoint not in self.seen:
            self.seen.append(checkpoint)
        return self.seen.index(checkpoint) + 1


@pytest.fixture
def ingress(monkeypatch):
    """Our ingress class as written (under Serve's ingress wrapper), its LLM client on a stand-in."""
    from mmc_ray.serve import checkpoints
    from mmc_ray.serve.app import CriticServer, LLMDeploymentCritic

    cls = next(c for c in CriticServer.func_or_class.__mro__[1:] if c.__name__ == "CriticServer")
    registry = FakeRegistry()
    monkeypatch.setattr(checkpoints, "registry", lambda: registry)
    server = cls(ServeConfig(backend="vllm"), EngineConfig(device="cuda"), None)
    server.backend = LLMDeploymentCritic(LLMDeploymentClient(FakeLLMServer(), "mmc-critic", "mmc-critic",
                                                             make_request=dict),
                                         server.cfg, EngineConfig(device="cuda"))
    return server


@pytest.fixture
def adapter_ingress(ingress):
    """The ingress of an app on CPU serving adapters critic-r1 and critic-r2 from an adapter store."""
    from mmc_ray.serve.app import LLMDeploymentCritic

    serve_cfg = ServeConfig(backend="vllm", adapter_store="s3://bucket/critics")
    critic = EngineConfig(kind="vllm", device="cpu", adapters=("critic-r1=s3://bucket/critics/critic-r1",
                                                              "critic-r2=s3://bucket/critics/critic-r2"))
    ingress.cfg = serve_cfg
    ingress.backend = LLMDeploymentCritic(LLMDeploymentClient(FakeLLMServer(), "mmc-critic", "mmc-critic",
                                                              make_request=dict), serve_cfg, critic)
    return ingress


def test_an_adapter_request_goes_to_its_multiplexed_model_and_the_base_through_the_zero_adapter(
        adapter_ingress):
    from mmc_ray.serve.adapter_state import ServedAdapters

    sent = adapter_ingress.backend.llm._handle.requests
    for model in ("critic-r1", None):
        asyncio.run(adapter_ingress.critique(critique_request(model=model)))
    # Ray Serve LLM routes a LoRA request by its multiplexed id and vLLM applies the adapter named in it
    assert [(r["multiplexed"], r["model"]) for r in sent] == [("mmc-critic:critic-r1",) * 2,
                                                              ("mmc-critic:zero-base",) * 2]
    # an alias moved in the registry's record: requests for it go to the version it now names
    record = ServedAdapters({"critic-r2": "s3://bucket/critics/critic-r2"}, {"critic": "critic-r2"})
    adapter_ingress.backend._follow_entry({"adapters": record, "zero_base": True})
    reply = asyncio.run(adapter_ingress.critique(critique_request(model="critic")))
    assert sent[-1]["multiplexed"] == "mmc-critic:critic-r2" and reply.model == "critic-r2"
    with pytest.raises(RequestRejected) as gone:  # a version the record dropped is not answered to
        asyncio.run(adapter_ingress.critique(critique_request(model="critic-r1")))
    assert gone.value.status == 404
    models = [m["id"] for m in asyncio.run(adapter_ingress.models())["data"]]
    assert models == ["mmc-critic", "critic-r2", "critic"]


def test_ingress_critique_goes_through_the_llm_deployment(ingress):
    reply = asyncio.run(ingress.critique(critique_request()))
    (sent,) = ingress.backend.llm._handle.requests
    assert sent["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert (reply.critique.verdict, reply.critique.first_wrong_step) == ("incorrect", 2)
    assert (reply.model, reply.version, reply.usage.prompt_tokens) == ("mmc-critic", 1, 50)


def test_ingress_score_steps_uses_prompt_logprobs(ingress):
    steps = ["a", "b", "c"]
    reply = asyncio.run(ingress.score_steps(critique_request(steps=steps)))
    openings = outcome_openings(3)
    expected = step_scores([FakeLLMServer.char_logprob(o) * len(o) for o in openings])
    assert reply.p_correct == pytest.approx(expected.p_correct)
    assert reply.step_sound == pytest.approx(list(expected.step_sound))
    assert len(ingress.backend.llm._handle.requests) == len(openings) + 1


def test_ingress_chat_completions_and_models_report_the_served_checkpoint(ingress):
    from mmc_ray.serve.protocol import ChatCompletionRequest

    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "Check: 2 + 2 = 5"}], max_tokens=8)
    reply = asyncio.run(ingress.chat_completions(chat))
    assert reply["choices"][0]["message"]["content"] == CRITIQUE_TEXT and reply["model"] == "mmc-critic"
    models = asyncio.run(ingress.models())["data"][0]
    assert (models["checkpoint"], models["version"]) == ("/models/critic-v1", 1)
    ingress.backend.llm._handle.source = "/models/critic-v2"  # the LLM deployment rolled out a new critic
    models = asyncio.run(ingress.models())["data"][0]
    assert (models["checkpoint"], models["version"]) == ("/models/critic-v2", 2)


@pytest.mark.parametrize(("error", "status"), [((400, "prompt too long"), 400), ((503, "no engine"), None)])
def test_ingress_maps_llm_errors(ingress, error, status):
    from mmc_ray.serve.app import EngineFailed

    ingress.backend.llm._handle.error = error
    with pytest.raises(RequestRejected if status else EngineFailed) as err:
        asyncio.run(ingress.critique(critique_request()))
    if status:
        assert err.value.status == status and "prompt too long" in str(err.value)


def test_vllm_backend_cannot_build_without_vllm():
    pytest.importorskip("ray")
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    from mmc_ray.serve.app import build_critic_app

    cfg = Config(serve=ServeConfig(backend="vllm"), critic=EngineConfig(device="cuda"))
    with pytest.raises(ImportError, match=r"serve\.backend=vllm needs Ray Serve LLM"):
        build_critic_app(cfg.serve, cfg.critic)


def test_a_second_first_load_of_an_adapter_is_retried_once_it_is_loaded(adapter_ingress):
    """Ray Serve LLM 2.60 loads an adapter at its first request without a lock: of two at once, the
    second fails with vLLM's "already loaded". The adapter is loaded by then, so it is sent again."""
    from mmc_ray.serve.llm import ADAPTER_LOAD_RACE

    server = adapter_ingress.backend.llm._handle
    answer, failures = server._chat, []

    def racing(request):
        if not failures:
            failures.append(request)
            raise RuntimeError(f"Failed to load lora model: adapter 'mmc-critic:critic-r1' {ADAPTER_LOAD_RACE}")
        return answer(request)

    server._chat = racing
    reply = asyncio.run(adapter_ingress.critique(critique_request(model="critic-r1")))
    assert reply.critique.verdict == "incorrect" and len(failures) == 1
    server._chat = lambda request: (_ for _ in ()).throw(RuntimeError("engine died"))
    with pytest.raises(Exception, match="engine died"):  # anything else is not retried
        asyncio.run(adapter_ingress.critique(critique_request(model="critic-r1")))
