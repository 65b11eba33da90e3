"""`OpenAIEngine`: any OpenAI-compatible chat-completions server behind the engine interface (our
`mmc-ray serve` critic, a vLLM server, a hosted API), so refinement can use a remote critic or actor
by changing one config line.

Images travel as base64 PNG data URLs. An `assistant_prefix` is sent as a final assistant message
with `continue_final_message` (the vLLM extension; servers without it answer from scratch). A
request that fails (connection refused, timeout, HTTP error, malformed reply) becomes error
completions for that request only, with the cause; the other requests of the call are unaffected.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from mmc_ray.config import EngineConfig
from mmc_ray.generation import (
    Completion,
    GenerationRequest,
    GenerationResult,
    error_result,
    sampling_temperature,
)

FINISH_REASONS = {"stop": "stop", "length": "length"}


def to_openai_messages(req: GenerationRequest) -> list[dict[str, Any]]:
    images = iter(req.images)
    messages = []
    for m in req.messages:
        content = m["content"]
        if not isinstance(content, str):
            content = [
                {"type": "image_url", "image_url": {
                    "url": "data:image/png;base64," + base64.b64encode(next(images)).decode()}}
                if part.get("type") == "image" else {"type": "text", "text": part.get("text", "")}
                for part in content
            ]
        messages.append({"role": m["role"], "content": content})
    if req.assistant_prefix:
        messages.append({"role": "assistant", "content": req.assistant_prefix})
    return messages


def request_body(req: GenerationRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "messages": to_openai_messages(req), "n": req.n,
        "temperature": sampling_temperature(req.temperature), "top_p": req.top_p,
        "max_tokens": req.max_new_tokens,
    }
    if req.stop:
        body["stop"] = list(req.stop)
    if req.seed is not None:
        body["seed"] = req.seed
    if req.logprobs:
        body["logprobs"] = True
    if req.assistant_prefix:
        body.update(continue_final_message=True, add_generation_prompt=False)
    return body


def parse_response(data: Any, n: int) -> GenerationResult:
    """A chat-completions reply → result; raises ValueError when it is not one."""
    try:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        per_choice = (usage.get("completion_tokens") or 0) // max(1, len(choices))
        completions = []
        for c in choices:
            text = c["message"]["content"] or ""
            logprobs = None
            if c.get("logprobs") and c["logprobs"].get("content") is not None:
                logprobs = tuple(float(t["logprob"]) for t in c["logprobs"]["content"])
            completions.append(Completion(text, FINISH_REASONS.get(c.get("finish_reason"), "stop"),
                                          per_choice, logprobs))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a chat-completions reply ({type(e).__name__}: {e})") from None
    if len(completions) != n:
        raise ValueError(f"asked for {n} choices, got {len(completions)}")
    return GenerationResult(tuple(completions), int(usage.get("prompt_tokens") or 0))


class OpenAIEngine:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 120.0,
                 max_concurrency: int = 8) -> None:
        self.name = f"openai:{model}"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="openai-engine")

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> OpenAIEngine:
        api = cfg.openai
        return cls(api.base_url, api.served_model or cfg.model_path, os.environ.get(api.api_key_env),
                   api.request_timeout_s, api.max_concurrency)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return list(self._pool.map(self._one, requests))

    def _one(self, req: GenerationRequest) -> GenerationResult:
        try:
            reply = self._client.post("chat/completions", json=request_body(req, self.model))
            if reply.status_code != 200:
                raise ValueError(f"HTTP {reply.status_code}: {reply.text[:200]}")
            return parse_response(reply.json(), req.n)
        except (httpx.HTTPError, ValueError) as e:
            error = f"{self.name}: {type(e).__name__}: {e}"
            return error_result(req.n, error)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._client.close()
