"""The critic service: one Ray Serve deployment with a FastAPI ingress.

    POST /v1/critique          question, image, steps → Critique JSON
    POST /v1/score_steps       same input → P(step i is sound) per step (a process reward model)
    POST /v1/chat/completions  OpenAI-compatible (image_url data URIs), so `OpenAIEngine` works
    GET  /v1/models            the served model, its checkpoint version, its LoRA adapters and aliases
    GET  /healthz

Two backends (`serve.backend`) behind the same endpoints, auth and limits, each one class with the
same four methods (`reconfigure`, `generate`, `score`, `served`) the deployment calls, and the model
names it answers to (`names`: LoRA adapters and their aliases, `mmc_ray.serve.adapter_state`):
- hf (`LocalCritic`; CPU, the default): every generation goes through one `@serve.batch` method, so concurrent
  requests share engine calls. The engine is swapped in `reconfigure` when `user_config.checkpoint`
  changes: the new one is loaded first and then replaces the old, so requests in flight finish on
  the old engine and no request fails during a swap. Adapters are swapped in place too: versions
  loaded, aliases moved, old versions unloaded once no request holds them.
- vllm (`LLMDeploymentCritic`; GPU): the replica holds no model; it sends the same requests as chat
  completions to a Ray Serve LLM deployment through its handle (`mmc_ray.serve.llm`), which batches,
  scales and swaps. Adapters live in `serve.adapter_store` (`mmc_ray.serve.adapter_store`); a request
  for one goes to `<served_model>:<adapter>`, which Ray Serve LLM loads on first use.
A request's engine failure is a 500 for that request; the replica keeps serving. Every error has
OpenAI's shape `{"error": {"message", "type", "param", "code", "field"}}` (`protocol.error_body`): 4xx
for what the client sent (naming the field), 401 without the bearer token, 404 `model_not_found`
for a model name other than the served one, 413 for a body over `max_body_bytes` (enforced while it
is read), 503 + Retry-After from the proxy for the requests of a replica that died
(`mmc_ray.serve.proxy_errors`), which `OpenAIEngine` retries. `stream: true` answers a chat with
OpenAI's server-sent chunks once the completion is generated (both backends generate whole
completions: the stream's first chunk comes when the whole answer is ready).
"""

# No `from __future__ import annotations` here: Serve's ingress rebuilds the endpoint signatures
# and FastAPI must see the request models as real classes to read them from the body.
import asyncio
import functools
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException

from mmc_ray.config import EngineConfig, ServeConfig
from mmc_ray.config.adapter_names import parse_adapter_specs
from mmc_ray.critique.schema import parse_critique
from mmc_ray.critique.step_scores import outcome_openings, step_scores
from mmc_ray.dashboard_metrics import StageMetrics
from mmc_ray.engine_protocol import GenerationRequest, GenerationResult, ScoresContinuations
from mmc_ray.errors import BadInput
from mmc_ray.serve.adapter_state import ServedAdapters, ServedNames
from mmc_ray.serve.adapter_store import needs_zero_base
from mmc_ray.serve.llm import LLMCallFailed, LLMDeploymentClient
from mmc_ray.serve.protocol import (
    ChatCompletionRequest,
    CritiqueRequest,
    CritiqueResponse,
    ErrorResponse,
    RequestRejected,
    ScoreStepsResponse,
    Usage,
    chat_completion,
    chat_completion_events,
    chat_generation,
    critique_body,
    critique_generation,
    error_body,
)

logger = logging.getLogger(__name__)
_ERRORS = {401: "missing or wrong bearer token (when the server has one)",
           404: "model_not_found: a model name other than the served one or its adapters",
           413: "the body, or an image in it, is over the server's limit",
           422: "the request is malformed or over a limit; `field` names what",
           500: "the engine failed on this request (the replica keeps serving)",
           501: "the engine cannot do this (score_steps on an engine that cannot score)",
           503: "the replica serving the request was lost; retry (Retry-After)"}
api = FastAPI(title="mmc-ray critic", version="1",
              description="A multimodal critic: critiques step-by-step solutions of visual questions.",
              responses={code: {"model": ErrorResponse, "description": why} for code, why in _ERRORS.items()})


class EngineFailed(RuntimeError):
    pass


@api.exception_handler(RequestRejected)
async def _rejected(_: Request, err: RequestRejected) -> JSONResponse:
    serve_metrics().inc("rejected")
    return _reply(err.status, str(err), err.field, err.code)


@api.exception_handler(HTTPException)
async def _http_error(_: Request, err: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method, a body that is not UTF-8 JSON) in the
    same shape; an unparseable body is a 422 like every other malformed request."""
    serve_metrics().inc("rejected")
    if err.status_code == 400:
        return _reply(422, f"body: not a UTF-8 JSON document ({err.detail})", "body", "json_invalid")
    return _reply(err.status_code, str(err.detail), headers=dict(err.headers or {}))


OPEN_PATHS = ("/healthz", "/docs", "/openapi.json")
# The replica's auth and body limit (one replica per process). Module state set through a module
# function: Serve ships the deployment class by value but this module by reference, so only code
# of this module sees the same globals as the middleware.
_GUARD: dict[str, Any] = {"api_key": None, "max_body_bytes": 0}


@functools.cache
def serve_metrics() -> StageMetrics:
    """The replica's dashboard metrics (created in the replica, where Ray is up)."""
    return StageMetrics("serve", counters=("critiques", "step_scores", "chat_completions", "rejected",
                                           "engine_failures"), gauges=("batch_size", "model_version"))


def configure_guard(api_key: str | None, max_body_bytes: int) -> None:
    _GUARD.update(api_key=api_key, max_body_bytes=max_body_bytes)


def _reply(status: int, message: str, field: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = error_body(status, message, field, code, **extra)
    return JSONResponse(body, status_code=status, headers=headers)


class RequestGuard:
    """Bearer auth (constant-time compare) and the body-size limit, as plain ASGI around the app,
    before any body is parsed. The limit holds while the body is read: a declared Content-Length
    over it is refused unread, and a chunked body is read only up to it, so an oversized body costs
    the replica at most `max_body_bytes` of memory."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        token: str | None = _GUARD["api_key"]
        if token is not None and not scope["path"].endswith(OPEN_PATHS):
            sent = headers.get(b"authorization", b"")
            if not hmac.compare_digest(sent, f"Bearer {token}".encode()):
                reply = _reply(401, "missing or wrong bearer token", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
                return await reply(scope, receive, send)
        limit: int = _GUARD["max_body_bytes"]
        if limit:
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > limit:
                return await self._too_large(int(declared), limit, scope, receive, send)
            received, size = [], 0
            while True:
                message = await receive()
                received.append(message)
                size += len(message.get("body", b""))
                if size > limit:
                    return await self._too_large(size, limit, scope, receive, send, read_so_far=True)
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            receive = _replay(received, receive)
        await self.app(scope, receive, send)

    @staticmethod
    async def _too_large(size: int, limit: int, scope: dict[str, Any], receive: Any, send: Any,
                         read_so_far: bool = False) -> None:
        serve_metrics().inc("rejected")
        what = f"more than {size} bytes read" if read_so_far else f"{size} bytes"
        await _reply(413, f"body: {what}, at most {limit}", "body", "request_too_large",
                     headers={"Connection": "close"})(scope, receive, send)


def _replay(messages: list[dict[str, Any]], receive: Any) -> Any:
    """An ASGI `receive` that hands out the messages already read, then reads on."""
    pending = iter(messages)

    async def replayed() -> dict[str, Any]:
        return next(pending, None) or await receive()

    return replayed


api.add_middleware(RequestGuard)
_build_openapi = api.openapi


def _openapi_with_bearer_auth() -> dict[str, Any]:
    """FastAPI's document plus the bearer token `RequestGuard` checks, on every operation but the
    open ones (clients and fuzzers then know to send it)."""
    if api.openapi_schema is None:
        schema = _build_openapi()
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "required when the server has a token (serve.api_key_env or serve.api_key_file)"}}
        for path, operations in schema["paths"].items():
            if not path.endswith(OPEN_PATHS):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
    return api.openapi_schema


api.openapi = _openapi_with_bearer_auth  # type: ignore[method-assign]


def _field(loc: tuple[Any, ...]) -> str:
    """A pydantic location as our field names: ("body", "steps", 0) -> steps[0]."""
    field = ""
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else str(part)
    return field.encode("utf-8", "backslashreplace").decode() or "body"  # a key sent as "\ud800"


@api.exception_handler(RequestValidationError)
async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
    serve_metrics().inc("rejected")
    errors = err.errors() or [{"loc": ("body",), "msg": "invalid request", "type": "invalid"}]
    # The errors' inputs stay out of the reply: they may be exactly what cannot be encoded (NaN, "\ud800").
    details = [{"field": _field(tuple(e["loc"])), "message": str(e["msg"]), "type": e["type"]}
               for e in errors]
    first = errors[0]
    if first["type"] == "json_invalid":  # its location is a character offset, not a field
        reason = (first.get("ctx") or {}).get("error", "")
        details[0] = {"field": "body", "message": f"invalid JSON at character {first['loc'][-1]}: {reason}",
                      "type": "json_invalid"}
    field = details[0]["field"]
    return _reply(422, f"{field}: {details[0]['message']}", field, details[0]["type"], details=details)


@api.exception_handler(EngineFailed)
async def _engine_failed(_: Request, err: EngineFailed) -> JSONResponse:
    serve_metrics().inc("engine_failures")
    return _reply(500, str(err))


def resolve_api_key(cfg: ServeConfig) -> str | None:
    """The bearer token clients must send, from the environment or a file; None = no auth."""
    if token := os.environ.get(cfg.api_key_env, "").strip():
        return token
    if cfg.api_key_file and Path(cfg.api_key_file).is_file():
        return Path(cfg.api_key_file).read_text().strip() or None
    return None


class LocalCritic:
    """backend=hf: our engine in this replica. Every generation goes through one `@serve.batch`
    method; checkpoints arrive through `reconfigure` and the registry, and a new engine replaces the
    old only once it is loaded."""

    def __init__(self, serve_cfg: ServeConfig, engine_cfg: EngineConfig) -> None:
        self.cfg = serve_cfg
        self.engine_cfg = engine_cfg
        self.engine: Any = None
        self.checkpoint = ""
        self.version = 0
        self.loaded_at = 0.0
        self._loading = threading.Lock()
        self._watcher: threading.Thread | None = None
        self.names = ServedNames()
        self._served_adapters: ServedAdapters | None = None  # the registry's record, once seen
        self._refused: set[tuple[str, str]] = set()  # adapters that failed to load: warned once
        self._generate_batch.set_max_batch_size(serve_cfg.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(serve_cfg.batch_wait_timeout_s)

    def _load(self, checkpoint: str) -> None:
        from mmc_ray.engines.factory import build_engine

        with self._loading:
            if checkpoint == self.checkpoint:
                return
            engine = build_engine(replace(self.engine_cfg, model_path=checkpoint))
            if self._served_adapters is not None:  # the new engine answers to every name the old one did
                self._load_adapters(engine, self._served_adapters)
            self.engine, self.checkpoint = engine, checkpoint  # swap only once the new one is ready
            self.names.follow(_adapter_names(engine), self.names.aliases())
            self.version += 1
            self.loaded_at = time.time()
            serve_metrics().set("model_version", self.version)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """`checkpoint` swaps the engine; `adapters` (NAME=PATH each) and `aliases` (ALIAS: NAME), when
        given, are the adapters to serve from now on: a Serve config's (RayService) way to swap a round
        in, checked by the same rules as `mmc-ray adapters` (a deploy by `mmc-ray serve` uses the
        registry instead)."""
        if checkpoint := user_config.get("checkpoint"):
            self._load(checkpoint)
        if "adapters" in user_config or "aliases" in user_config:
            self._follow_adapters(self._adapters_from(user_config))
        if self._watcher is None:
            self._watcher = follow_registry(self.cfg.checkpoint_poll_s, self._follow_entry)

    def _adapters_from(self, user_config: dict[str, Any]) -> ServedAdapters:
        """The record `user_config` asks for, as a change of the one served now (BadInput if refused)."""
        current = self._served_adapters or ServedAdapters(parse_adapter_specs(self.engine_cfg.adapters), {},
                                                          self.engine_cfg.adapter)
        paths = parse_adapter_specs(user_config.get("adapters") or ())
        aliases = dict(user_config.get("aliases") or {})
        dropped = [name for name in (*current.aliases, *current.paths) if name not in {**paths, **aliases}]
        return current.changed(paths, aliases, dropped)

    def _follow_entry(self, wanted: dict[str, Any]) -> None:
        if wanted.get("checkpoint"):
            self._load(wanted["checkpoint"])
        if wanted.get("adapters") is not None:
            self._follow_adapters(wanted["adapters"])

    def _follow_adapters(self, served: ServedAdapters) -> None:
        """Load the versions `served` names, point its aliases, then unload the versions it no longer
        names, each once no request holds it (else on a later poll)."""
        with self._loading:
            self._served_adapters = served
            loaded = getattr(self.engine, "adapters", None)
            if loaded is None:
                return  # an engine kind without adapters: the app was deployed with none
            self._load_adapters(self.engine, served)
            self.names.follow(loaded.paths, served.aliases)
            for name in [n for n in loaded.paths if n not in served.paths]:
                if self.names.retire(name):
                    loaded.unload(name)

    def _load_adapters(self, engine: Any, served: ServedAdapters) -> None:
        for name, path in served.paths.items():
            if name in engine.adapters.paths or (name, path) in self._refused:
                continue
            try:
                engine.adapters.load(name, path)
            except Exception as e:  # a broken adapter is refused; the others and the base serve on
                self._refused.add((name, path))
                logger.warning("adapter %s (%s) not loaded: %s: %s", name, path, type(e).__name__, e)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult | Exception]:
        engine = self.engine
        serve_metrics().set("batch_size", len(requests))
        try:
            # In a thread: the event loop keeps answering health checks while the model runs.
            return await asyncio.to_thread(engine.generate, requests)
        except Exception as e:  # one failed batch fails its requests, not the replica
            return [EngineFailed(f"engine failed: {type(e).__name__}: {e}")] * len(requests)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        result = await self._generate_batch(request)
        if isinstance(result, Exception):
            raise result
        return result

    def cannot_score(self) -> str | None:
        return None if isinstance(self.engine, ScoresContinuations) else \
            f"engine {self.engine.name} cannot score continuations"

    async def score(self, request: GenerationRequest, openings: list[str]) -> list[float]:
        try:
            return await asyncio.to_thread(self.engine.score, request, openings)
        except Exception as e:
            raise EngineFailed(f"engine failed: {type(e).__name__}: {e}") from e

    async def served(self, max_age_s: float | None = None) -> tuple[str, int, float]:
        return self.checkpoint, self.version, self.loaded_at


def follow_registry(poll_s: float, follow: Callable[[dict[str, Any]], None]) -> threading.Thread:
    """A thread that gives `follow` this app's entry in the checkpoint registry (see
    `mmc_ray.serve.checkpoints`) every `poll_s`, for as long as the replica lives."""
    import ray

    from mmc_ray.serve.checkpoints import registry

    app = serve.get_replica_context().app_name

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            try:
                follow(ray.get(registry().get.remote(app), timeout=30))
            except Exception as e:  # a bad checkpoint or a registry hiccup must not kill serving
                logger.warning("checkpoint watch: %s: %s", type(e).__name__, e)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def _adapter_names(engine: Any) -> list[str]:
    loaded = getattr(engine, "adapters", None)
    return list(loaded.paths) if loaded is not None else []


class LLMDeploymentCritic:
    """backend=vllm: the replica holds no model; the same requests go as chat completions to a Ray
    Serve LLM deployment, which batches, scales and is swapped by a redeploy."""

    def __init__(self, client: LLMDeploymentClient, serve_cfg: ServeConfig, engine_cfg: EngineConfig) -> None:
        """Answers to the adapters `engine_cfg` names (published to `serve.adapter_store`) until
        `follow` sees the app's record in the registry."""
        self.llm = client
        self.cfg = serve_cfg
        self.names = ServedNames()
        self.names.follow(parse_adapter_specs(engine_cfg.adapters), {})
        self.llm.zero_base = (needs_zero_base(serve_cfg.adapter_store, engine_cfg.device)
                              and bool(engine_cfg.adapters))

    def follow(self) -> None:
        """Follow the app's adapters in the registry (in a replica)."""
        follow_registry(self.cfg.checkpoint_poll_s, self._follow_entry)

    def _follow_entry(self, wanted: dict[str, Any]) -> None:
        """Ray Serve LLM loads a version at its first request and evicts the least used, so a
        version the record drops is only no longer answered to (a 404)."""
        served: ServedAdapters | None = wanted.get("adapters")
        if served is not None:
            self.names.follow(served.paths, served.aliases)
            self.llm.zero_base = bool(wanted.get("zero_base")) and bool(served.paths)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Nothing to load here: the LLM deployment holds the model."""

    async def _call(self, call: Any) -> Any:
        """Await a call to the LLM deployment: its 4xx answers are the client's, anything else a 500."""
        try:
            return await call
        except LLMCallFailed as e:
            if 400 <= e.status < 500:
                raise RequestRejected("body", str(e), status=e.status) from None
            raise EngineFailed(f"engine failed: {e}") from e
        except Exception as e:  # the deployment is unreachable, a replica died mid-request, ...
            raise EngineFailed(f"engine failed: {type(e).__name__}: {e}") from e

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await self._call(self.llm.generate(request))

    def cannot_score(self) -> str | None:
        return None  # from the prompt logprobs of each opening

    async def score(self, request: GenerationRequest, openings: list[str]) -> list[float]:
        return await self._call(self.llm.score(request, openings))

    async def served(self, max_age_s: float | None = None) -> tuple[str, int, float]:
        """Asks the LLM deployment at most every `max_age_s` (None: the last answer; 0: now)."""
        if max_age_s is not None:
            try:
                await self.llm.refresh(max_age_s)
            except Exception as e:  # a version lookup must not fail the request it labels
                logger.warning("LLM deployment state: %s: %s", type(e).__name__, e)
        served = self.llm.served
        return served.checkpoint, served.version, served.since


# One server-sent event of a streamed chat (OpenAPI before 3.2: `schema` describes each event).
_CHUNK_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "description": "a chat.completion.chunk as JSON; the last event is [DONE]"},
    "event": {"type": "string"}}}


@serve.deployment
@serve.ingress(api)
class CriticServer:
    def __init__(self, serve_cfg: ServeConfig, engine_cfg: EngineConfig, api_key: str | None,
                 llm: Any = None) -> None:
        """`llm`: a handle to the Ray Serve LLM deployment (backend=vllm); None runs our engine here."""
        self.cfg = serve_cfg
        if llm is None:
            self.backend: LocalCritic | LLMDeploymentCritic = LocalCritic(serve_cfg, engine_cfg)
        else:
            client = LLMDeploymentClient(llm, serve_cfg.served_model, serve.get_replica_context().app_name,
                                         default_adapter=engine_cfg.adapter)
            self.backend = LLMDeploymentCritic(client, serve_cfg, engine_cfg)
            self.backend.follow()
        configure_guard(api_key, serve_cfg.max_body_bytes)
        # The checkpoint arrives through `reconfigure` (Serve calls it before the replica is ready).

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's `user_config`: a new `checkpoint` hot-swaps (hf)."""
        self.backend.reconfigure(user_config)

    async def _generate(self, request: GenerationRequest) -> GenerationResult:
        result = await self.backend.generate(request)
        failed = [c.error for c in result.completions if c.finish_reason == "error"]
        if failed:
            raise EngineFailed(f"engine failed: {failed[0]}")
        return result

    async def _served(self, max_age_s: float | None = None) -> tuple[str, int, float]:
        """(checkpoint, version, since) of the model that answers."""
        return await self.backend.served(max_age_s)

    def _adapter(self, model: str | None) -> Any:
        """Context: the adapter version `model` names (None: the default), kept loaded meanwhile."""
        return self.backend.names.holding(model, self.cfg.served_model)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        _, version, _ = await self._served()
        import ray

        return {"status": "ok", "model": self.cfg.served_model, "version": version, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id()}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        checkpoint, version, since = await self._served(max_age_s=0)
        base = {"id": self.cfg.served_model, "object": "model", "owned_by": "mmc-ray", "created": int(since),
                "version": version, "checkpoint": checkpoint}
        aliases = self.backend.names.aliases()
        adapters = [{"id": name, "object": "model", "owned_by": "mmc-ray", "created": int(since),
                     "parent": self.cfg.served_model,
                     **({"alias_of": aliases[name]} if name in aliases else {})}
                    for name in self.backend.names.names()]
        return {"object": "list", "data": [base, *adapters]}

    @api.post("/v1/critique", response_model=CritiqueResponse)
    async def critique(self, body: CritiqueRequest) -> CritiqueResponse:
        # Image checks decode pixels: off the event loop, which keeps filling the batch meanwhile.
        serve_metrics().inc("critiques")
        with self._adapter(body.model) as adapter:
            request = await asyncio.to_thread(critique_generation, body, self.cfg)
            result = await self._generate(replace(request, adapter=adapter))
        completion = result.completions[0]
        parsed = parse_critique(completion.text, num_steps=len(body.steps))
        _, version, _ = await self._served(max_age_s=self.cfg.checkpoint_poll_s)
        return CritiqueResponse(
            critique=critique_body(parsed.critique), text=completion.text, parse_error=parsed.error,
            model=adapter or self.cfg.served_model, version=version,
            usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=completion.completion_tokens,
                        total_tokens=result.prompt_tokens + completion.completion_tokens))

    @api.post("/v1/score_steps", response_model=ScoreStepsResponse)
    async def score_steps(self, body: CritiqueRequest) -> ScoreStepsResponse:
        """The critic as a process reward model: one soundness probability per step."""
        if why := self.backend.cannot_score():
            raise RequestRejected("model", why, status=501)
        with self._adapter(body.model) as adapter:
            request = replace(await asyncio.to_thread(critique_generation, body, self.cfg), adapter=adapter)
            logprobs = await self.backend.score(request, outcome_openings(len(body.steps)))
        serve_metrics().inc("step_scores")
        scores = step_scores(logprobs)
        _, version, _ = await self._served(max_age_s=self.cfg.checkpoint_poll_s)
        return ScoreStepsResponse(step_sound=list(scores.step_sound), p_correct=scores.p_correct,
                                  first_wrong_step=list(scores.first_wrong_step),
                                  model=adapter or self.cfg.served_model, version=version)

    @api.post("/v1/chat/completions", responses={200: {
        "description": "a chat.completion, or with stream=true chat.completion.chunk events ending in [DONE]",
        "content": {"text/event-stream": {"schema": _CHUNK_EVENT}}}})
    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        serve_metrics().inc("chat_completions")
        # Generated before any byte is sent: a failure is still an error reply, never a cut stream.
        with self._adapter(body.model) as adapter:
            request = await asyncio.to_thread(chat_generation, body, self.cfg)
            result = await self._generate(replace(request, adapter=adapter))
        model = adapter or self.cfg.served_model
        completion_id, created = f"chatcmpl-{time.time_ns():x}", int(time.time())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = chat_completion_events(result, model, completion_id, created, include_usage)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return chat_completion(result, model, completion_id, created)


def build_critic_app(serve_cfg: ServeConfig, engine_cfg: EngineConfig) -> serve.Application:
    """The application, with replicas, resources, batching and limits from `serve_cfg`; with
    backend=vllm also the Ray Serve LLM deployment the ingress calls (needs vLLM: GPU machines)."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": serve_cfg.num_cpus, "num_gpus": serve_cfg.num_gpus},
        "max_ongoing_requests": serve_cfg.max_ongoing_requests,
        "user_config": {"checkpoint": serve_cfg.checkpoint},
        **serve_cfg.replica_scaling(),
    }
    api_key = resolve_api_key(serve_cfg)
    if serve_cfg.backend == "vllm":
        from mmc_ray.serve.llm import build_llm_deployment

        if engine_cfg.adapters and not serve_cfg.adapter_store:
            raise BadInput("serve.backend=vllm serves LoRA adapters from serve.adapter_store (an s3://, "
                           "gs://, abfss:// or azure:// folder): Ray Serve LLM loads adapters from cloud "
                           "storage only")
        if serve_cfg.adapter_store:
            from mmc_ray.serve.adapter_store import published_critic

            engine_cfg = published_critic(serve_cfg, engine_cfg)
        # The checkpoint is the LLM deployment's model_source; the ingress holds no model, and it
        # drains as long as the LLM deployment does, while requests wait for a new LLM replica.
        del options["user_config"]
        options["graceful_shutdown_timeout_s"] = serve_cfg.graceful_shutdown_timeout_s
        return CriticServer.options(**options).bind(replace(serve_cfg, checkpoint=""), engine_cfg, api_key,
                                                    build_llm_deployment(serve_cfg, engine_cfg))
    # The checkpoint lives only in user_config: a new one then changes nothing else, and Serve
    # reconfigures the running replicas instead of replacing them.
    return CriticServer.options(**options).bind(replace(serve_cfg, checkpoint=""), engine_cfg, api_key)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point for `serve run` / `serve deploy` / a KubeRay RayService:
    `import_path: mmc_ray.serve.app:app_builder`, `args: {config: path.yaml, overrides: [...]}`."""
    from mmc_ray.config import load_config

    cfg = load_config(args.get("config"), list(args.get("overrides", [])))
    return build_critic_app(cfg.serve, cfg.critic)


def openapi_spec() -> str:
    """The service's OpenAPI document as JSON text (checked in as docs/openapi.json)."""
    import json

    return json.dumps(api.openapi(), indent=2, sort_keys=True) + "\n"
