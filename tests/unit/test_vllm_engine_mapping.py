"""The vLLM engine's pure parts on CPU: requests → prompts and sampling kwargs, config → engine
arguments, vLLM-shaped outputs → our results. Stand-ins have the fields of vLLM's `RequestOutput`,
`CompletionOutput` and `Logprob` that the engine reads; the engine itself is tested in the vLLM tier
(tests/engines, tests/vllm_tier)."""

import importlib.util
import io
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from mmc_ray.config import EngineConfig, ResourcesConfig, VLLMConfig
from mmc_ray.engine_protocol import GenerationRequest
from mmc_ray.engines.vllm import (
    AsyncRequests,
    CallGate,
    PreparedBatch,
    assemble,
    chat_prompt,
    end_token_ids,
    llm_kwargs,
    prepare,
    sampling_kwargs,
    to_completion,
    to_result,
)
from mmc_ray.models.loading import decode_image


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[dict[int, Logprob]] | None = None


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


@pytest.fixture(scope="module")
def tokenizer():
    from mmc_ray.models.tiny import build_tokenizer

    return build_tokenizer(256)  # byte-level, no BPE training: fast


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, format="PNG")
    return out.getvalue()


IMAGE_MESSAGES = ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},)
TEXT_MESSAGES = ({"role": "user", "content": "Add 2 and 3."},)


def test_module_imports_without_vllm_or_torch():
    code = ("import sys, mmc_ray.engines.vllm; heavy = [m for m in ('vllm', 'torch') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_building_the_engine_without_vllm_says_what_to_install():
    from mmc_ray.engines.factory import build_engine

    with pytest.raises(ImportError, match=r"mmc-ray\[gpu\]"):
        build_engine(EngineConfig(kind="vllm", model_path="nowhere"))


def test_prompt_is_the_chat_template_plus_the_assistant_prefix_as_in_hf(tokenizer):
    from mmc_ray.models.loading import LoadedVLM

    hf = LoadedVLM(model=None, tokenizer=tokenizer, image_processor=None, device=None, image_token_id=0,
                   merge_size=2, wants_mm_token_type_ids=False)
    prompt = chat_prompt(tokenizer, IMAGE_MESSAGES, "Step 1: I see")
    assert prompt == hf.chat_prompt(IMAGE_MESSAGES, "Step 1: I see")
    assert prompt.endswith("<|im_start|>assistant\nStep 1: I see")
    assert prompt.count("<|vision_start|><|image_pad|><|vision_end|>") == 1  # vLLM expands it per image


def test_sampling_kwargs_carry_every_request_field():
    req = GenerationRequest(TEXT_MESSAGES, n=4, temperature=0.7, top_p=0.9, max_new_tokens=33,
                            stop=("\n", "Answer:"), seed=11, logprobs=True)
    assert sampling_kwargs(req, stop_token_ids=[5]) == {
        "n": 4, "temperature": 0.7, "top_p": 0.9, "max_tokens": 33, "stop": ["\n", "Answer:"],
        "seed": 11, "logprobs": 1, "skip_special_tokens": True, "stop_token_ids": [5],
    }
    plain = sampling_kwargs(GenerationRequest(TEXT_MESSAGES, temperature=0.0))
    assert plain["temperature"] == 0.0 and plain["seed"] is None and plain["logprobs"] is None
    assert plain["stop"] == [] and "stop_token_ids" not in plain and "top_k" not in plain  # no hidden top-k


def test_pad_ends_a_completion_like_eos(tokenizer):
    assert end_token_ids(tokenizer) == [tokenizer.pad_token_id] != [tokenizer.eos_token_id]


def test_engine_arguments_from_the_config():
    cfg = EngineConfig(kind="vllm", resources=ResourcesConfig(num_gpus=2), min_pixels=3136, max_pixels=50176,
                       vllm=VLLMConfig(tensor_parallel_size=2, gpu_memory_utilization=0.6, max_model_len=4096,
                                       max_images_per_prompt=2), device="auto", dtype="auto")
    assert llm_kwargs(cfg) == {
        "tensor_parallel_size": 2, "distributed_executor_backend": "mp", "gpu_memory_utilization": 0.6,
        "max_model_len": 4096, "enable_prefix_caching": True, "dtype": "bfloat16",
        "limit_mm_per_prompt": {"image": 2}, "mm_processor_kwargs": {"min_pixels": 3136, "max_pixels": 50176},
    }
    one = llm_kwargs(EngineConfig(kind="vllm", device="cuda", dtype="float32",
                                  vllm=VLLMConfig(enable_prefix_caching=False)))
    assert one["distributed_executor_backend"] == "uni" and one["dtype"] == "float32"
    assert one["enable_prefix_caching"] is False
    assert "enable_chunked_prefill" not in one and "kv_cache_memory_bytes" not in one
    cpu = llm_kwargs(EngineConfig(kind="vllm", device="cpu", vllm=VLLMConfig(cpu_kv_cache_gib=3)))
    assert cpu["enable_chunked_prefill"] is False and cpu["kv_cache_memory_bytes"] == 3 * 2**30


def test_prepare_decodes_images_once_and_fails_only_the_broken_request(tokenizer):
    calls = []

    def counting_decode(data):
        calls.append(data)
        return decode_image(data)

    image = png()
    requests = [
        GenerationRequest(IMAGE_MESSAGES, images=(image,), assistant_prefix="Step 1:", n=2, seed=3),
        GenerationRequest(IMAGE_MESSAGES, images=(b"not an image",)),
        GenerationRequest(TEXT_MESSAGES, stop=("\n",)),
        GenerationRequest(IMAGE_MESSAGES, images=(image,)),
    ]
    batch = prepare(requests, tokenizer, counting_decode, stop_token_ids=[7])
    assert batch.index == [0, 2, 3]
    assert list(batch.errors) == [1] and "could not be decoded" in batch.errors[1]
    assert calls.count(image) == 1  # one decode per distinct image per call
    first, text_only, _ = batch.prompts
    assert first["prompt"] == chat_prompt(tokenizer, IMAGE_MESSAGES, "Step 1:")
    assert [im.size for im in first["multi_modal_data"]["image"]] == [(32, 32)]
    assert "multi_modal_data" not in text_only
    assert batch.params[0]["n"] == 2 and batch.params[0]["seed"] == 3
    assert batch.params[1]["stop"] == ["\n"] and batch.params[1]["stop_token_ids"] == [7]


def test_prepare_fails_only_the_request_whose_sampling_parameters_vllm_refuses(tokenizer):
    def strict_params(**kwargs):  # like SamplingParams, which raises ValueError for top_p=0
        if kwargs["top_p"] <= 0:
            raise ValueError(f"top_p must be in (0, 1], got {kwargs['top_p']}")
        return kwargs

    batch = prepare([GenerationRequest(TEXT_MESSAGES, top_p=0.0), GenerationRequest(TEXT_MESSAGES)],
                    tokenizer, decode_image, make_params=strict_params)
    assert batch.index == [1] and "top_p" in batch.errors[0]


class AsyncEngine:
    """Shaped like vLLM's `AsyncLLM` as `AsyncRequests` uses it: a prompt "p:<k>" finishes after k
    ticks of 2 ms; "too long" is refused with a ValueError, "die" fails as a dead engine core does.
    Records which requests were running together and which were cancelled."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.together: list[set[str]] = []
        self.cancelled: list[str] = []
        self.shut_down = False
        self.loop_thread = threading.current_thread().name  # where AsyncRequests built it

    async def generate(self, prompt: str, params: Any, request_id: str, lora_request: Any = None):
        import asyncio

        if prompt == "too long":
            raise ValueError("prompt is longer than max_model_len")
        if prompt == "die":
            await asyncio.sleep(0.01)
            raise RuntimeError("engine core died")
        self.running.add(request_id)
        try:
            for _ in range(int(prompt.split(":")[1])):
                self.together.append(set(self.running))
                await asyncio.sleep(0.002)
        except asyncio.CancelledError:
            self.cancelled.append(request_id)
            raise
        finally:
            self.running.discard(request_id)
        yield SimpleNamespace(request_id=request_id, prompt=prompt)

    def get_num_unfinished_requests(self) -> int:
        return len(self.running)

    def shutdown(self) -> None:
        self.shut_down = True


def test_requests_return_in_order_and_a_rejected_prompt_fails_alone():
    requests = AsyncRequests(AsyncEngine)
    try:
        outputs = requests.run(["p:3", "too long", "p:1"], [{}, {}, {}], [None] * 3)
        assert [o.prompt for o in (outputs[0], outputs[2])] == ["p:3", "p:1"]
        assert isinstance(outputs[1], ValueError) and "max_model_len" in str(outputs[1])
        assert requests.engine.loop_thread == "vllm-requests"  # built on the loop's own thread
    finally:
        requests.close()
    assert requests.engine.shut_down


def test_concurrent_calls_run_as_one_batch():
    """A short call made while a long one runs is batched with it and returns first."""
    requests = AsyncRequests(AsyncEngine)
    finished: list[str] = []
    try:
        long = threading.Thread(target=lambda: (requests.run(["p:200", "p:2"], [{}, {}], [None, None]), finished.append("long")))
        long.start()
        while not requests.engine.running:
            time.sleep(0.001)
        short = requests.run(["p:3"], [{}], [None])
        finished.append("short")
        long.join(10)
        assert finished == ["short", "long"]
        assert any(short[0].request_id in running and len(running) == 2 for running in requests.engine.together)
    finally:
        requests.close()


def test_an_engine_failure_fails_the_call_and_cancels_its_other_requests():
    requests = AsyncRequests(AsyncEngine)
    try:
        with pytest.raises(RuntimeError, match="engine core died"):
            requests.run(["p:500", "die"], [{}, {}], [None, None])
        time.sleep(0.05)
        assert requests.engine.cancelled and not requests.engine.running
        assert requests.run(["p:1"], [{}], [None])[0].prompt == "p:1"  # the loop serves on
    finally:
        requests.close()


def test_call_gate_holds_exclusive_work_until_calls_leave_and_new_calls_until_it_ends():
    gate, order = CallGate(), []
    entered = threading.Event()

    def call() -> None:
        with gate.shared():
            entered.set()
            time.sleep(0.05)
            order.append("call")

    def reload() -> None:
        with gate.exclusive():
            order.append("reload")
            time.sleep(0.05)

    first = threading.Thread(target=call)
    first.start()
    entered.wait(5)
    swapper = threading.Thread(target=reload)
    swapper.start()
    time.sleep(0.01)
    late = threading.Thread(target=call)  # arrives while the reload waits: runs after it
    late.start()
    for t in (first, swapper, late):
        t.join(5)
    assert order == ["call", "reload", "call"]


def test_completion_cuts_stop_strings_and_maps_finish_reasons():
    stop = ("<END>",)
    cut = to_completion(CompletionOutput(0, "abc<END>def", [1, 2, 3], "length"), stop)
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == ("abc", "stop", 3)
    eos = to_completion(CompletionOutput(0, "done", [4, 5], "stop"), stop)
    assert (eos.text, eos.finish_reason, eos.logprobs) == ("done", "stop", None)
    long = to_completion(CompletionOutput(0, "and so on", [6, 7, 8, 9], "length"), ())
    assert (long.finish_reason, long.completion_tokens) == ("length", 4)
    aborted = to_completion(CompletionOutput(0, "par", [1], "abort"), ())
    assert (aborted.finish_reason, aborted.text) == ("error", "") and "abort" in aborted.error


def test_logprobs_are_the_chosen_tokens_one_per_completion_token():
    steps = [{10: Logprob(-0.5), 11: Logprob(-0.2)},  # top-1 differs from the sampled token
             {12: Logprob(-1.25)}]
    c = to_completion(CompletionOutput(0, "xy", [10, 12], "stop", steps), ())
    assert c.logprobs == (-0.5, -1.25) and len(c.logprobs) == c.completion_tokens


def test_result_orders_samples_and_counts_prompt_tokens():
    output = RequestOutput([1] * 17, [CompletionOutput(1, "second", [2], "stop"),
                                      CompletionOutput(0, "first", [1], "stop")])
    result = to_result(output, ())
    assert [c.text for c in result.completions] == ["first", "second"] and result.prompt_tokens == 17


def test_assemble_keeps_request_order_with_errors():
    requests = [GenerationRequest(TEXT_MESSAGES, n=2), GenerationRequest(TEXT_MESSAGES),
                GenerationRequest(TEXT_MESSAGES, n=3)]
    batch = PreparedBatch(prompts=[{}, {}], params=[{}, {}], index=[0, 2], errors={1: "bad image"})
    outputs: list[Any] = [RequestOutput([1, 2], [CompletionOutput(i, f"s{i}", [1], "stop") for i in range(2)]),
                          ValueError("prompt too long")]
    results = assemble(requests, batch, outputs)
    assert [c.text for c in results[0].completions] == ["s0", "s1"] and results[0].prompt_tokens == 2
    assert [c.finish_reason for c in results[1].completions] == ["error"]
    assert results[1].completions[0].error == "bad image"
    assert len(results[2].completions) == 3 and "prompt too long" in results[2].completions[0].error


def test_role_worker_reloads_an_engine_with_its_own_reload_in_place():
    from mmc_ray.workers.role_worker import RoleWorker

    class Reloadable:
        name = "fake"

        def __init__(self):
            self.paths = []

        def reload(self, path):
            self.paths.append(path)

    worker = RoleWorker(EngineConfig(kind="simulated"))
    engine = worker.engine = Reloadable()
    assert RoleWorker.reload(worker, "runs/critic-v2") == 1
    assert worker.engine is engine and engine.paths == ["runs/critic-v2"]  # no second copy on the GPU
    assert worker.cfg.model_path == "runs/critic-v2"


def test_a_model_vllms_cpu_attention_would_reject_is_refused_before_vllm_starts(tmp_path):
    from mmc_ray.engines.vllm import check_cpu_head_dim

    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 64,
                                                                      "num_attention_heads": 4}}))
    with pytest.raises(ValueError, match="head_dim 16 < 32, which vLLM's CPU build cannot run"):
        check_cpu_head_dim(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 2}))
    check_cpu_head_dim(tmp_path)  # head_dim 32
