"""The vllm serve backend: Ray Serve LLM (`ray.serve.llm`, vLLM) serves the critic on GPUs, and our
ingress (`mmc_ray.serve.app.CriticServer`: same endpoints, auth and limits as on CPU) calls it
through a deployment handle. We do not run vLLM ourselves here: Ray Serve LLM's `LLMServer` brings
replica autoscaling, continuous batching, prefix caching, multi-LoRA, request routing and its
dashboards; we add only the critic protocol in front of it.

    HTTP → CriticServer (ingress, CPU) ──handle.chat(ChatCompletionRequest)──> LLMServer:<model> (vLLM)

What travels is an OpenAI chat-completion body built by `mmc_ray.engines.openai.request_body` from the
same `GenerationRequest` the CPU path gives `HFEngine` (the critic prompt of
`mmc_ray.critique.prompts`, the image as a `data:image/png;base64,` image_url part), and the reply is
read by `mmc_ray.engines.openai.parse_response`, so both paths parse the same text the same way.

`/v1/score_steps` needs log P(opening | prompt) for each of the n + 1 critique openings
(`mmc_ray.critique.step_scores`). vLLM's chat API gives them as prompt log-probabilities: each opening
is sent as a final assistant message that the model continues (`continue_final_message`) with
`prompt_logprobs: 0` (each prompt token's own log-probability) and `max_tokens: 1`; one more request
with the bare prompt gives its length in tokens (`usage.prompt_tokens`), and an opening's score is
the sum over the tokens after that length: `HFEngine.score`'s definition. n + 2 requests share one
prefix.

Hot-swap: the checkpoint is the LLM deployment's `model_source`, so a new checkpoint is a redeploy
of the app (`mmc_ray.serve.deploy.deploy`, or a changed `serve.checkpoint` in a Serve config). Serve
rolls it out replica by replica: a replaced replica takes no new requests and finishes those in
flight (up to `serve.graceful_shutdown_timeout_s`), and requests that find no ready replica wait
in the handle's queue, so no request fails; on a single GPU the new replica starts once the old one
is gone. `/v1/models` asks the LLM deployment which checkpoint it runs (`LLMServer.llm_config`) and
numbers checkpoints per app in the checkpoint registry (`mmc_ray.serve.checkpoints`).

On CPU (`critic.device: cpu`, vLLM's CPU build) the LLM deployment runs with a CPU accelerator config
and the critic's `resources.num_cpus`; the vLLM tier (tests/vllm_tier/test_serve_llm.py) runs every
endpoint that way. The pure functions here (`llm_config_dict`, `score_bodies`, `continuation_logprobs`,
`reply_data`) are tested without vLLM. Importing `ray.serve.llm` needs vLLM, so it is imported only
where a deployment is built or called.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mmc_ray.config import EngineConfig, ServeConfig
from mmc_ray.engine_protocol import GenerationRequest, GenerationResult
from mmc_ray.engines.openai import parse_response, request_body
from mmc_ray.engines.vllm import llm_kwargs, lora_slots

ADAPTER_LOAD_RACE = "has already been loaded"  # vLLM's refusal of a second load of one adapter


class LLMCallFailed(RuntimeError):
    """The LLM deployment answered with an error (`status` is its HTTP code) or not at all."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def llm_config_dict(serve_cfg: ServeConfig, engine_cfg: EngineConfig) -> dict[str, Any]:
    """The keyword arguments of `ray.serve.llm.LLMConfig` for the served critic: the model is
    `serve.checkpoint` exposed as `serve.served_model`; vLLM's engine settings are the `critic`
    engine's (as `VLLMEngine` uses them, less the executor, which Ray Serve LLM chooses); replicas and
    queueing are the `serve` section's."""
    store = serve_cfg.adapter_store
    engine_kwargs = {k: v for k, v in llm_kwargs(engine_cfg, lora=bool(store)).items()
                     if k != "distributed_executor_backend"}
    deployment: dict[str, Any] = {"max_ongoing_requests": serve_cfg.max_ongoing_requests,
                                  "graceful_shutdown_timeout_s": serve_cfg.graceful_shutdown_timeout_s,
                                  **serve_cfg.replica_scaling()}
    config: dict[str, Any] = {
        "model_loading_config": {"model_id": serve_cfg.served_model, "model_source": serve_cfg.checkpoint},
        "engine_kwargs": engine_kwargs,
        "deployment_config": deployment,
    }
    if store:  # adapters come from the store, each loaded by a replica at its first request
        config["lora_config"] = {"dynamic_lora_loading_path": store,
                                 "max_num_adapters_per_replica": lora_slots(engine_cfg)}
    if serve_cfg.accelerator_type:
        config["accelerator_type"] = serve_cfg.accelerator_type
    if engine_cfg.device == "cpu":
        # vLLM's CPU build: without an accelerator config the replica asks for a GPU and never starts.
        # The replica's CPUs are the critic's resources.num_cpus, all in its one bundle (the replica
        # actor itself reserves none, else Ray Serve LLM adds one CPU to the bundle).
        config["accelerator_config"] = {"kind": "cpu"}
        config["placement_group_config"] = {"bundles": [{"CPU": engine_cfg.resources.num_cpus}]}
        deployment["ray_actor_options"] = {"num_cpus": 0}
    return config


def build_llm_deployment(serve_cfg: ServeConfig, engine_cfg: EngineConfig) -> Any:
    """The Ray Serve LLM deployment of the critic (an `Application` to bind into the ingress)."""
    try:
        from ray.serve.llm import LLMConfig
        from ray.serve.llm import build_llm_deployment as build
    except ImportError as e:
        raise ImportError(f"serve.backend=vllm needs Ray Serve LLM with vLLM (pip install 'mmc-ray[gpu]' on "
                          f"a CUDA machine, or the docker/Dockerfile.cuda image; vLLM's CPU build: make "
                          f"setup-vllm), or serve.backend=hf ({e})") from e
    return build(LLMConfig(**llm_config_dict(serve_cfg, engine_cfg)))


def score_bodies(request: GenerationRequest, continuations: Sequence[str],
                 model: str) -> list[dict[str, Any]]:
    """Chat bodies that score `continuations` of `request`'s prompt: first the bare prompt (for its
    length), then one per continuation, continued as the assistant's message, with prompt logprobs."""
    base = replace(request, n=1, temperature=0.0, top_p=1.0, max_new_tokens=1, stop=(), seed=None,
                   logprobs=False)
    bodies = [request_body(base, model)]
    for text in continuations:
        body = request_body(replace(base, assistant_prefix=base.assistant_prefix + text), model)
        body["prompt_logprobs"] = 0  # each prompt token's own log-probability, no alternatives
        bodies.append(body)
    return bodies


def _token_logprob(entry: Any, position: int) -> float:
    if not isinstance(entry, Mapping) or len(entry) != 1:
        raise ValueError(f"prompt token {position}: expected its own log-probability alone, got {entry!r}")
    (value,) = entry.values()
    return float(value["logprob"] if isinstance(value, Mapping) else value)


def continuation_logprobs(replies: Sequence[Mapping[str, Any]]) -> list[float]:
    """Replies to `score_bodies` (same order) → log-probability of each continuation: the sum of the
    prompt logprobs after the bare prompt's length. ValueError when a reply lacks them."""
    try:
        start = int(replies[0]["usage"]["prompt_tokens"])
    except (KeyError, TypeError, ValueError, IndexError):
        raise ValueError("the bare-prompt reply has no usage.prompt_tokens") from None
    scores = []
    for reply in replies[1:]:
        entries = reply.get("prompt_logprobs") or []
        if len(entries) <= start:
            raise ValueError(f"{len(entries)} prompt logprobs, none after the {start}-token prompt "
                             f"(does the server return prompt_logprobs?)")
        scores.append(sum(_token_logprob(entries[i], i) for i in range(start, len(entries))))
    return scores


def reply_data(item: Any) -> dict[str, Any]:
    """One item of `LLMServer.chat` (a response model, or a dict) → its JSON body; an error body
    (`{"error": {"message", "code", ...}}`) or a stream chunk raises `LLMCallFailed`."""
    if isinstance(item, str | bytes):
        raise LLMCallFailed(502, "the LLM deployment streamed; a whole response was expected")
    data = item.model_dump(mode="json") if hasattr(item, "model_dump") else dict(item)
    error = data.get("error")
    if error:
        code = error.get("code") if isinstance(error, Mapping) else None
        message = error.get("message") if isinstance(error, Mapping) else str(error)
        raise LLMCallFailed(int(code) if isinstance(code, int) else 500, f"LLM deployment: {message}")
    return data


@dataclass(frozen=True)
class ServedModel:
    checkpoint: str = ""
    version: int = 0
    since: float = 0.0  # when this ingress replica first saw the checkpoint
    checked_at: float = 0.0


class LLMDeploymentClient:
    """Our generation requests through a handle to the `LLMServer` deployment (in the ingress replica)."""

    def __init__(self, handle: Any, model: str, app: str, make_request: Any = None,
                 default_adapter: str = "") -> None:
        """`make_request(**body)` builds what `LLMServer.chat` takes; None: Ray Serve LLM's
        `ChatCompletionRequest` (vLLM's request model), imported at the first call. A request that
        names no adapter uses `default_adapter` ("" = the base)."""
        self._handle = handle
        self._handles: dict[str, Any] = {"": handle.options(stream=True)}  # LLMServer.chat: a generator
        self.model, self.app = model, app
        self._make_request = make_request
        self.default_adapter = default_adapter
        self.zero_base = False  # set while the base must go through the store's zero adapter (CPU)
        self.served = ServedModel()

    def _target(self, adapter: str | None) -> tuple[Any, str]:
        """(handle, model) for a request's adapter: Ray Serve LLM picks a LoRA adapter by the
        multiplexed model id `<model>:<adapter>` (a replica downloads it from the adapter store)."""
        from mmc_ray.serve.adapter_store import ZERO_BASE

        name = self.default_adapter if adapter is None else adapter
        name = name or (ZERO_BASE if self.zero_base else "")
        model = f"{self.model}:{name}" if name else self.model
        if name not in self._handles:
            self._handles[name] = self._handle.options(stream=True, multiplexed_model_id=model)
        return self._handles[name], model

    async def _chat(self, handle: Any, body: dict[str, Any]) -> dict[str, Any]:
        if self._make_request is None:
            from ray.serve.llm.openai_api_models import ChatCompletionRequest

            self._make_request = ChatCompletionRequest
        try:
            items = [item async for item in handle.chat.remote(self._make_request(**body))]
        except Exception as e:
            # Ray Serve LLM 2.60 loads an adapter at its first request without a lock, so of two
            # first requests at once the second fails to load it again: by then it is loaded.
            if ADAPTER_LOAD_RACE not in str(e):
                raise
            items = [item async for item in handle.chat.remote(self._make_request(**body))]
        if not items:
            raise LLMCallFailed(502, "the LLM deployment returned nothing")
        return reply_data(items[0])

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        handle, model = self._target(request.adapter)
        data = await self._chat(handle, request_body(request, model))
        try:
            return parse_response(data, request.n)
        except ValueError as e:
            raise LLMCallFailed(502, str(e)) from None

    async def score(self, request: GenerationRequest, continuations: Sequence[str]) -> list[float]:
        """Log-probability of each continuation of the request's prompt (as `HFEngine.score`)."""
        handle, model = self._target(request.adapter)
        bodies = score_bodies(request, continuations, model)
        replies = await asyncio.gather(*(self._chat(handle, body) for body in bodies))
        try:
            return continuation_logprobs(replies)
        except ValueError as e:
            raise LLMCallFailed(502, str(e)) from None

    async def refresh(self, max_age_s: float = 0.0) -> ServedModel:
        """Which checkpoint the LLM deployment runs and its version, asked at most every `max_age_s`."""
        if self.served.checked_at and time.time() - self.served.checked_at < max_age_s:
            return self.served
        from mmc_ray.serve.checkpoints import registry

        config = await self._handle.llm_config.remote()
        checkpoint = str(config.model_loading_config.model_source)
        version = await registry().version.remote(self.app, checkpoint)
        since = self.served.since if checkpoint == self.served.checkpoint else time.time()
        self.served = ServedModel(checkpoint, version, since, time.time())
        return self.served
