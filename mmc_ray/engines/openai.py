"""`OpenAIEngine`: any OpenAI-compatible chat-completions server behind the engine interface (our
`mmc-ray serve` critic, a vLLM server, a hosted API), so refinement can use a remote critic or actor
by changing one config line.

Images travel as base64 PNG data URLs. An `assistant_prefix` is sent as a final assistant message
with `continue_final_message` (the vLLM extension; servers without it answer from scratch).
A request the server could not answer (connection lost, HTTP 429/500/502/503/504: a replica that
died under load, a server restarting) is retried with exponential backoff, `max_retries` times. A
request that still fails (or fails for good: timeout, another HTTP error, a malformed reply) becomes
error completions for that request only, with the cause; the other requests of the call are unaffected.
"""

from __future__ import annotations

import base64
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from mmc_ray.config import EngineConfig
from mmc_ray.engine_protocol import (
    Completion,
    GenerationRequest,
    GenerationResult,
    error_result,
    sampling_temperature,
)

FINISH_REASONS = {"stop": "stop", "length": "length"}
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0


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


def _retry_after(reply: httpx.Response, default_s: float) -> float:
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(reply.headers["retry-after"])))
    except (KeyError, ValueError):
        return default_s


class OpenAIEngine:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 120.0,
                 max_concurrency: int = 8, max_retries: int = 4, retry_backoff_s: float = 0.5) -> None:
        self.name = f"openai:{model}"
        self.model = model
        self.max_retries, self.retry_backoff_s = max_retries, retry_backoff_s
        self.retries = 0  # requests sent again, over the engine's life (read by tests and reports)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="openai-engine")

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> OpenAIEngine:
        api = cfg.openai
        return cls(api.base_url, api.served_model or cfg.model_path, os.environ.get(api.api_key_env),
                   api.request_timeout_s, api.max_concurrency, api.max_retries, api.retry_backoff_s)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return list(self._pool.map(self._one, requests))

    def _one(self, req: GenerationRequest) -> GenerationResult:
        body = request_body(req, self.model)
        for attempt in range(self.max_retries + 1):
            wait = self._backoff(attempt)
            try:
                reply = self._client.post("chat/completions", json=body)
                if reply.status_code == 200:
                    return parse_response(reply.json(), req.n)
                error = f"HTTP {reply.status_code}: {reply.text[:200]}"
                if reply.status_code not in RETRIED_STATUSES:
                    break
                wait = _retry_after(reply, wait)
            except httpx.TimeoutException as e:  # the server is working on it: sending it again adds load
                error = f"{type(e).__name__}: {e}"
                break
            except httpx.TransportError as e:  # connection refused or lost: a server restarting
                error = f"{type(e).__name__}: {e}"
            except (httpx.HTTPError, ValueError) as e:
                error = f"{type(e).__name__}: {e}"
                break
            if attempt < self.max_retries:
                self.retries += 1
                time.sleep(wait)
        return error_result(req.n, f"{self.name}: {error}")

    def step_sound(self, question: str, steps: Sequence[str], answer: str | None,
                   images: Sequence[bytes]) -> list[float] | None:
        """`ScoresSteps` through the server's `/v1/score_steps` (`mmc-ray serve`); None from a server
        that has no such endpoint or refuses the solution."""
        body = {"question": question, "steps": list(steps), "answer": answer,
                "image": base64.b64encode(images[0]).decode() if images else None}
        reply = self._client.post("score_steps", json=body)
        return reply.json()["step_sound"] if reply.status_code == 200 else None

    def _backoff(self, attempt: int) -> float:
        """Exponential, with jitter so requests that failed together do not come back together."""
        return self.retry_backoff_s * 2 ** attempt * random.uniform(0.75, 1.25)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._client.close()
