"""`VLLMEngine`: vLLM behind the `GenerationEngine` protocol (the `gpu` extra), on vLLM's public
`AsyncLLM` API (the one its OpenAI server and Ray Serve LLM use): no internal ids, no hand-written
stepping, no environment written.

vLLM is imported only when an engine is constructed, so `import mmc_ray.engines.vllm` needs neither
vLLM nor torch. Everything between our requests and vLLM's objects is a pure function here
(`chat_prompt`, `sampling_kwargs`, `llm_kwargs`, `prepare`, `to_result`, `assemble`) or plain Python
(`AsyncRequests`, `CallGate`), tested on CPU with stand-ins shaped like vLLM's `AsyncLLM` and
`RequestOutput`/`CompletionOutput`.

Semantics are `HFEngine`'s:
- the prompt is the model's own chat template (`tokenizer.apply_chat_template(...,
  add_generation_prompt=True)`) plus `assistant_prefix`, which the model continues. Each
  `{"type": "image"}` part becomes the template's image placeholder, which vLLM's processor expands
  per image from `multi_modal_data={"image": [PIL images]}`, resized within the same
  `min_pixels`/`max_pixels` as HF. vLLM tokenises the text itself, adding the tokenizer's special
  tokens where HF adds none; Qwen2-VL's tokenizer adds none, so the prompt tokens are HF's;
- stop strings are excluded from the text (vLLM cuts them; `apply_stop` runs again, as in HF); EOS
  or the pad token ends a completion, and `completion_tokens` counts the token that ended it;
- `logprobs` are the chosen tokens' log-probabilities under the unmodified distribution (vLLM's
  default `raw_logprobs`, before temperature and top-p), one per completion token;
- no hidden top-k (we pass none and vLLM ignores the model's generation_config when it is given
  sampling parameters); temperature 0 is greedy;
- a request whose image cannot be decoded, or that vLLM rejects (a `ValueError`: sampling
  parameters it refuses, a prompt longer than `max_model_len`), gets `error` completions; the rest
  of the batch runs. Any other exception is an engine failure and propagates (the worker pool
  retries the batch).
One difference: `seed` seeds its request alone (vLLM gives sample i the seed + i), so a seeded
request is reproducible whatever batch it is in, where HF derives one seed per batch; the two
engines draw different samples from the same seed.

Scheduling is vLLM's continuous batching (all `n` samples of a request share its prompt's KV), and
it spans calls: `generate` submits its prompts as requests to one `AsyncLLM` on an event loop of its
own thread and waits for their final outputs, so calls made at once from several threads (a Ray
worker holding several batches, `LocalDispatcher` with `concurrency` > 1) run as one batch
(`AsyncRequests`). The MCTS driver's batches, each as long as its slowest rollout, overlap instead
of leaving the engine idle at every batch's tail. On CPU the KV cache is sized by the engine argument
`kv_cache_memory_bytes` (`vllm.cpu_kv_cache_gib`).
`enable_prefix_caching` (on by default) keeps KV blocks of earlier prompts: MCTS expands siblings
from one path and rolls out each new node several times, so most of a batch's prompt tokens
(question, image tokens, the path so far) are computed once.

Tensor parallelism inside our Ray worker. `create_worker_group` gives each replica one placement-
group bundle, and the config requires `resources.num_gpus == tensor_parallel_size`; a bundle lies on
one node, so it holds all the replica's GPUs and Ray sets `CUDA_VISIBLE_DEVICES` of the worker to
them. vLLM then starts its tensor-parallel workers as local processes on those GPUs
(`distributed_executor_backend="mp"`; `"uni"`, in process, for one GPU). We name the backend: left
to itself, vLLM sees that it runs in a Ray placement group and picks its Ray executor, which would
try to place one worker per bundle whose GPU this actor already holds. OpenRLHF and veRL do it the
other way round: one bundle per GPU, the Ray executor, and `VLLM_RAY_BUNDLE_INDICES` to pin each
worker to its bundle. That is needed only for a replica larger than a node, which we do not support.

Reload. `reload(path)` picks up newly exported weights: it checks the folder, waits for the batches in
flight (new batches wait for the new model: `CallGate`), shuts the
engine down (its engine-core processes end, which frees their GPU memory), tears down vLLM's
distributed state, collects garbage and empties the CUDA cache, then builds a new engine from the
folder. The
prefix cache starts empty (KV computed with the old weights must not be reused). A reload costs a
full engine start (weights, memory profiling, CUDA graphs: tens of seconds for a 2-7B model).
In-place weight sync (OpenRLHF's `collective_rpc` into the workers) would be faster but needs the
trainer and the engine in one process group; a reload needs only the exported folder.

What is tested: the pure functions above without vLLM (tests/unit/test_vllm_engine_mapping.py), and
the engine itself on vLLM's CPU build in the vLLM tier (`make test-vllm`): the engine contract it
shares with `HFEngine` (tests/engines), greedy agreement with `HFEngine`, seeds, reload
(tests/vllm_tier). The TP (`mp` executor) path and CUDA memory release have not run yet: no GPU.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmc_ray.config import EngineConfig
from mmc_ray.config.adapter_names import ADAPTER_CONFIG, ADAPTER_WEIGHTS, parse_adapter_specs
from mmc_ray.engine_protocol import (
    Completion,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    apply_stop,
    error_result,
    sampling_temperature,
)
from mmc_ray.errors import BadInput, MissingInput
from mmc_ray.models.adapters import AdapterSet

# vLLM's finish reasons we keep; anything else ("abort", None) becomes an error completion.
FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length"}
LOGPROBS_PER_TOKEN = 1  # vLLM returns the top-k and always the chosen token; we keep the chosen one


def chat_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]], assistant_prefix: str = "") -> str:
    """Messages rendered with the model's chat template, ready for the assistant to continue (the
    same text as `LoadedVLM.chat_prompt`)."""
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return text + assistant_prefix


def end_token_ids(tokenizer: Any) -> list[int]:
    """Tokens that end a completion besides EOS (which vLLM stops at itself): the pad token, as in
    `HFEngine`."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    return [pad] if pad is not None and pad != eos else []


def sampling_kwargs(req: GenerationRequest, stop_token_ids: Sequence[int] = ()) -> dict[str, Any]:
    """`vllm.SamplingParams` keyword arguments of one request."""
    kwargs: dict[str, Any] = {
        "n": req.n,
        "temperature": sampling_temperature(req.temperature),  # 0 = greedy
        "top_p": req.top_p,
        "max_tokens": req.max_new_tokens,
        "stop": list(req.stop),  # excluded from the text (include_stop_str_in_output=False)
        "seed": req.seed,
        "logprobs": LOGPROBS_PER_TOKEN if req.logprobs else None,
        "skip_special_tokens": True,
    }
    if stop_token_ids:
        kwargs["stop_token_ids"] = list(stop_token_ids)
    return kwargs


def lora_slots(cfg: EngineConfig) -> int:
    """Adapters one batch may mix: `vllm.max_loras`, on CPU one more for the zero adapter that base
    requests run through (`VLLMAdapters`)."""
    return cfg.vllm.max_loras + (cfg.device == "cpu")


def llm_kwargs(cfg: EngineConfig, lora: bool | None = None) -> dict[str, Any]:
    """vLLM engine arguments (all but `model`) of an engine config; LoRA is on with `lora`, by
    default when the config names adapters."""
    kwargs: dict[str, Any] = {
        "tensor_parallel_size": cfg.vllm.tensor_parallel_size,
        "distributed_executor_backend": "mp" if cfg.vllm.tensor_parallel_size > 1 else "uni",
        "gpu_memory_utilization": cfg.vllm.gpu_memory_utilization,
        "max_model_len": cfg.vllm.max_model_len,
        "enable_prefix_caching": cfg.vllm.enable_prefix_caching,
        # bf16 for "auto", as HFEngine on CUDA (vLLM's own "auto" turns fp32 checkpoints into fp16).
        "dtype": "bfloat16" if cfg.dtype == "auto" else cfg.dtype,
        "limit_mm_per_prompt": {"image": cfg.vllm.max_images_per_prompt},
    }
    if cfg.device == "cpu":
        # vLLM 0.29's CPU build kills its engine core ("CPU Generator does not use offset") when a
        # seeded request's prefill is split across scheduler steps; MCTS batches are seeded and large.
        kwargs["enable_chunked_prefill"] = False
        # Its KV cache is sized by this (or the legacy VLLM_CPU_KVCACHE_SPACE variable): without
        # either vLLM refuses to start on a shared host.
        kwargs["kv_cache_memory_bytes"] = cfg.vllm.cpu_kv_cache_gib << 30
    if cfg.adapters if lora is None else lora:
        # LoRA is sized at start (its GPU slots, the largest rank); adapters come and go while it runs.
        kwargs.update(enable_lora=True, max_loras=lora_slots(cfg), max_lora_rank=cfg.vllm.max_lora_rank)
    if cfg.min_pixels is not None and cfg.max_pixels is not None:
        kwargs["mm_processor_kwargs"] = {"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels}
    return kwargs


@dataclass
class PreparedBatch:
    """What goes to vLLM: one prompt and its sampling parameters per runnable request (`index` says
    which), and the requests that failed before reaching it (`errors`: request index → reason)."""

    prompts: list[dict[str, Any]] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    loras: list[Any] = field(default_factory=list)  # each prompt's LoRA request, None for the base
    index: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)


def prepare(requests: Sequence[GenerationRequest], tokenizer: Any, decode: Callable[[bytes], Any],
            stop_token_ids: Sequence[int] = (), make_params: Callable[..., Any] = dict,
            lora: Callable[[GenerationRequest], Any] = lambda _: None) -> PreparedBatch:
    """vLLM prompts for `requests`. `decode` turns image bytes into a PIL image, `make_params`
    sampling kwargs into `vllm.SamplingParams` and `lora` a request into its `LoRARequest` (None: the
    base); a ValueError from any fails that request only. Each distinct image is decoded once per call."""
    batch = PreparedBatch()
    decoded: dict[bytes, Any] = {}
    for r, req in enumerate(requests):
        try:
            for b in req.images:
                if b not in decoded:
                    decoded[b] = decode(b)
            params = make_params(**sampling_kwargs(req, stop_token_ids))
            adapter = lora(req)
        except ValueError as e:
            batch.errors[r] = str(e)
            continue
        images = [decoded[b] for b in req.images]
        prompt: dict[str, Any] = {"prompt": chat_prompt(tokenizer, req.messages, req.assistant_prefix)}
        if images:
            prompt["multi_modal_data"] = {"image": images}
        batch.prompts.append(prompt)
        batch.params.append(params)
        batch.loras.append(adapter)
        batch.index.append(r)
    return batch


class AsyncRequests:
    """Generate calls from any thread on one vLLM `AsyncLLM` (vLLM's public online API, the one its
    OpenAI server and Ray Serve LLM run on). Its event loop runs on a thread of its own; each call's
    prompts go in as requests with ids of ours and the call waits for their final outputs. vLLM
    batches every request in flight continuously, whatever call it came from, so a batch waiting on
    its slowest sequence leaves no idle engine: the other calls' sequences fill it. A ValueError for
    one request (sampling parameters vLLM refuses, a prompt longer than `max_model_len`) fails that
    request alone; any other exception fails the call, and its other requests are aborted."""

    def __init__(self, start: Callable[[], Any]) -> None:
        """`start()` builds the engine; it runs on the loop's thread (vLLM ties the engine's output
        handler to the loop it is first used on)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-requests", daemon=True)
        self._thread.start()
        self._ids = itertools.count()
        try:
            self.engine = self._wait(self._on_loop(start))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _on_loop(work: Callable[[], Any]) -> Any:
        return work()

    def _wait(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def call(self, method: Callable[[], Any]) -> Any:
        """Await the engine's coroutine `method()` on the loop, from any thread."""
        return self._wait(method())

    def run(self, prompts: Sequence[Any], params: Sequence[Any], loras: Sequence[Any]) -> list[Any]:
        """One final output per prompt (run with its LoRA request; None: the base), or the ValueError
        that rejected it."""
        return self._wait(self._all(prompts, params, loras))

    async def _all(self, prompts: Sequence[Any], params: Sequence[Any], loras: Sequence[Any]) -> list[Any]:
        tasks = [asyncio.ensure_future(self._one(p, s, lora))
                 for p, s, lora in zip(prompts, params, loras, strict=True)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # an engine failure: the call's other requests leave the engine
                task.cancel()
            raise

    async def _one(self, prompt: Any, params: Any, lora: Any) -> Any:
        final = None
        try:
            async for output in self.engine.generate(prompt, params, f"mmc-{next(self._ids)}",
                                                     lora_request=lora):
                final = output
        except ValueError as e:
            return e
        return final

    def close(self) -> None:
        """Shut the engine down (its engine-core process ends) and stop the loop."""
        try:
            self._wait(self._on_loop(self.engine.shutdown))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def to_completion(output: Any, stop: Sequence[str]) -> Completion:
    """Our `Completion` from a vLLM `CompletionOutput` (`.text`, `.token_ids`, `.finish_reason`,
    `.logprobs`: per token, a dict token id → object with `.logprob`)."""
    token_ids = list(output.token_ids)
    reason = FINISH_REASONS.get(output.finish_reason)
    if reason is None:
        return Completion("", "error", len(token_ids), error=f"vLLM finished with {output.finish_reason!r}")
    text, stopped = apply_stop(output.text, stop)
    logprobs = None
    if output.logprobs is not None:
        logprobs = tuple(float(step[token].logprob)
                         for token, step in zip(token_ids, output.logprobs, strict=True))
    return Completion(text, "stop" if stopped else reason, len(token_ids), logprobs)


def to_result(output: Any, stop: Sequence[str]) -> GenerationResult:
    """Our `GenerationResult` from a vLLM `RequestOutput` (its samples in index order)."""
    samples = sorted(output.outputs, key=lambda o: getattr(o, "index", 0))
    return GenerationResult(tuple(to_completion(o, stop) for o in samples),
                            len(output.prompt_token_ids or ()))



def assemble(requests: Sequence[GenerationRequest], batch: PreparedBatch,
             outputs: Sequence[Any]) -> list[GenerationResult]:
    """One result per request, in request order, from `AsyncRequests.run`'s outputs (or the
    ValueErrors that rejected them)."""
    results: dict[int, GenerationResult] = {r: error_result(requests[r].n, reason)
                                            for r, reason in batch.errors.items()}
    for r, output in zip(batch.index, outputs, strict=True):
        results[r] = (error_result(requests[r].n, f"vLLM rejected the request: {output}")
                      if isinstance(output, Exception) else to_result(output, requests[r].stop))
    return [results[r] for r in range(len(requests))]


def check_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").exists():
        raise MissingInput(f"no model at {path} (config.json missing); point model_path at a local "
                                f"HF checkpoint folder, e.g. a critic exported by `mmc-ray train`")
    return path


CPU_MIN_HEAD_DIM = 32  # vLLM 0.29's CPU attention: "Unsupported CPU attention configuration: head_dim=16"


def check_cpu_head_dim(path: Path) -> None:
    """Refuse, before vLLM starts, a model its CPU attention would reject at the first generate."""
    config = json.loads((path / "config.json").read_text())
    text = config.get("text_config") or config
    heads = text.get("num_attention_heads")
    head_dim = text.get("head_dim") or (text["hidden_size"] // heads if heads else None)
    if head_dim is not None and head_dim < CPU_MIN_HEAD_DIM:
        raise BadInput(f"{path}: attention head_dim {head_dim} < {CPU_MIN_HEAD_DIM}, which vLLM's CPU "
                         f"build cannot run; use kind=hf, or a model with fewer, wider heads (the tiny "
                         f"VLM: tiny_model.num_heads=2 at hidden_size 64)")


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"engine kind 'vllm' needs vLLM: pip install 'mmc-ray[gpu]' on a CUDA machine "
                          f"(or use the docker/Dockerfile.cuda image); on CPU, vLLM's CPU build in its own "
                          f"venv (make setup-vllm), or kind=hf ({e})") from e
    return vllm


class CallGate:
    """Generate calls share the engine; reload and close wait for them, and hold new ones back."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._calls = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: not self._exclusive)
            self._calls += 1
        try:
            yield
        finally:
            with self._cv:
                self._calls -= 1
                self._cv.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cv.wait_for(lambda: self._calls == 0)
        try:
            yield
        finally:
            with self._cv:
                self._exclusive = False
                self._cv.notify_all()


class VLLMAdapters(AdapterSet):
    """LoRA adapters of a `VLLMEngine`: each name gets a `LoRARequest` with an id of its own (ids are
    never reused, so a new version never meets an old one's cached blocks), added to the running
    engine at load, so a broken adapter fails its load and not the requests that name it.

    On vLLM's CPU build (0.29) a base-model row batched beside adapter rows gets the adapter in the
    last LoRA slot applied (its torch LoRA ops index the slots with the no-LoRA marker -1; vLLM PR
    #48421, open). There, base requests go through a zero adapter (the first adapter with its B
    matrices zeroed, which adds nothing), so no row carries the marker; it takes one LoRA slot."""

    BASE_STAND_IN = "~base"  # not a name a user can give (`check_adapter_name`)

    def __init__(self, engine: VLLMEngine, base_dir: str, enabled: bool, max_rank: int,
                 zero_base: bool) -> None:
        super().__init__(base_dir)
        self._engine, self._enabled, self._max_rank, self._zero_base = engine, enabled, max_rank, zero_base
        self._ids = itertools.count(1)
        self.requests: dict[str, Any] = {}
        self._scratch: str | None = None

    def _attach(self, name: str, path: str, config: Mapping[str, object]) -> None:
        if not self._enabled:
            raise BadInput("this vLLM engine was started without LoRA: give it at least one adapter in its "
                           "config (`adapters`) to load more while it runs")
        rank = config.get("r")
        if not isinstance(rank, int) or rank > self._max_rank:
            raise BadInput(f"{path}: rank {rank} is over vllm.max_lora_rank {self._max_rank}")
        if self._zero_base and self.BASE_STAND_IN not in self.requests:
            self._scratch = tempfile.mkdtemp(prefix="mmc-zero-lora-")
            self._add(self.BASE_STAND_IN, zero_adapter(path, self._scratch))
        self._add(name, path)

    def _add(self, name: str, path: str) -> None:
        from vllm.lora.request import LoRARequest

        request = LoRARequest(name, next(self._ids), str(Path(path).resolve()))
        self._engine.call(lambda engine: engine.add_lora(request))
        self.requests[name] = request

    def _detach(self, name: str) -> None:
        request = self.requests.pop(name)
        self._engine.call(lambda engine: engine.remove_lora(request.lora_int_id))

    def on_base(self, base_dir: str) -> VLLMAdapters:
        """An empty set like this one, for a reloaded base."""
        self.close()
        return VLLMAdapters(self._engine, base_dir, self._enabled, self._max_rank, self._zero_base)

    def request_of(self, name: str) -> Any:
        """The `LoRARequest` of adapter `name` (for the base: None, or the zero adapter); a ValueError
        for one not loaded."""
        return self.requests.get(self.require(name) or self.BASE_STAND_IN)

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


def zero_adapter(adapter: str | Path, folder: str | Path) -> str:
    """A copy of `adapter` in `folder` whose B matrices are zero: applied, it changes nothing."""
    from safetensors.torch import load_file, save_file

    source, folder = Path(adapter), Path(folder)
    weights = load_file(source / ADAPTER_WEIGHTS)
    save_file({k: v.zero_() if ".lora_B." in k else v for k, v in weights.items()}, folder / ADAPTER_WEIGHTS)
    shutil.copyfile(source / ADAPTER_CONFIG, folder / ADAPTER_CONFIG)
    return str(folder)


class VLLMEngine:
    """A local HF-format VLM served by vLLM. `reload(path)` swaps in newly exported weights;
    concurrent `generate` calls run as one continuous batch (`AsyncRequests`). Adapters
    (`cfg.adapters`, then `adapters.load`) are chosen per request, `default_adapter` for a request
    that names none."""

    name = "vllm"

    def __init__(self, cfg: EngineConfig, **engine_kwargs: Any) -> None:
        """`engine_kwargs` go to vLLM's engine arguments on top of the config's (e.g.
        `enforce_eager=True`)."""
        if cfg.device == "auto":
            import torch

            cfg = replace(cfg, device="cuda" if torch.cuda.is_available() else "cpu")
        self._device = cfg.device
        self._vllm = _import_vllm()
        from vllm.sampling_params import RequestOutputKind

        # Only the final output of each request: no per-token output to assemble and throw away.
        self._make_params = functools.partial(self._vllm.SamplingParams,
                                              output_kind=RequestOutputKind.FINAL_ONLY)
        # As vllm.LLM had it: no periodic throughput lines (Ray Serve LLM keeps vLLM's metrics on).
        self._llm_kwargs = {**llm_kwargs(cfg), "disable_log_stats": True, **engine_kwargs}
        self._gate = CallGate()
        self._requests: AsyncRequests | None = None
        self.tokenizer: Any = None
        self.model_path = ""
        self._load(check_model_dir(cfg.model_path))
        self.adapters = VLLMAdapters(self, self.model_path, bool(cfg.adapters), cfg.vllm.max_lora_rank,
                                     zero_base=cfg.device == "cpu")
        for name, path in parse_adapter_specs(cfg.adapters).items():
            self.adapters.load(name, path)
        self.default_adapter = cfg.adapter

    @classmethod
    def from_config(cls, cfg: EngineConfig, **engine_kwargs: Any) -> VLLMEngine:
        return cls(cfg, **engine_kwargs)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Thread-safe; calls made at once share the engine's batch."""
        from mmc_ray.models.loading import decode_image

        with self._gate.shared():
            if self._requests is None:
                raise RuntimeError("the vLLM engine is closed (or its last reload failed)")
            batch = prepare(requests, self.tokenizer, decode_image, self._stop_token_ids, self._make_params,
                            self._lora_of)
            return assemble(requests, batch, self._requests.run(batch.prompts, batch.params, batch.loras))

    def _lora_of(self, request: GenerationRequest) -> Any:
        return self.adapters.request_of(self.default_adapter if request.adapter is None else request.adapter)

    def call(self, method: Callable[[Any], Any]) -> Any:
        """Await `method(engine)`, a coroutine of the running `AsyncLLM`, between batches."""
        with self._gate.exclusive():
            if self._requests is None:
                raise RuntimeError("the vLLM engine is closed (or its last reload failed)")
            return self._requests.call(lambda: method(self._requests.engine))

    def reset_prefix_cache(self) -> None:
        """Forget the cached KV blocks of earlier prompts (benchmarks start every run cold)."""
        self.call(lambda engine: engine.reset_prefix_cache())

    def unfinished_requests(self) -> int:
        """Requests vLLM holds now, from every call in flight (0 when closed)."""
        requests = self._requests
        return 0 if requests is None else requests.engine.get_num_unfinished_requests()

    def reload(self, model_path: str | Path) -> None:
        """Replace the model with the one in `model_path` (see the module docstring); the adapters
        loaded are loaded again, checked against the new base."""
        path = check_model_dir(model_path)
        with self._gate.exclusive():
            self._shutdown()
            self._load(path)
        loaded, self.adapters = self.adapters, self.adapters.on_base(self.model_path)
        for name, adapter_path in loaded.paths.items():
            self.adapters.load(name, adapter_path)

    def close(self) -> None:
        """Stop the engine and free its GPU memory."""
        with self._gate.exclusive():
            self._shutdown()
        self.adapters.close()

    def _load(self, path: Path) -> None:
        from transformers import AutoTokenizer

        if self._device == "cpu":
            check_cpu_head_dim(path)

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        args = self._vllm.AsyncEngineArgs(model=str(path), **self._llm_kwargs)
        self._requests = AsyncRequests(lambda: self._vllm.AsyncLLMEngine.from_engine_args(args))
        self.tokenizer, self.model_path = tokenizer, str(path)
        self._stop_token_ids = end_token_ids(tokenizer)

    def _shutdown(self) -> None:
        requests, self._requests = self._requests, None
        if requests is None:
            return
        requests.close()  # ends the engine-core (and TP worker) processes holding the GPU
        del requests
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # model-parallel groups, gc, CUDA cache
