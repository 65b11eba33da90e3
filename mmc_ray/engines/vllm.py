"""`VLLMEngine`: vLLM offline inference behind the `GenerationEngine` protocol (the `gpu` extra).

vLLM is imported only when an engine is constructed, so `import mmc_ray.engines.vllm` needs neither
vLLM nor torch. Everything between our requests and vLLM's objects is a pure function here
(`chat_prompt`, `sampling_kwargs`, `llm_kwargs`, `prepare`, `to_result`, `assemble`) or plain Python
(`SharedSteps`, `CallGate`), tested on CPU with stand-ins shaped like vLLM's `LLMEngine` and
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
it spans calls: `generate` enqueues its prompts and steps the engine until they are done, and calls
made at once from several threads (a Ray worker holding several batches, `LocalDispatcher` with
`concurrency` > 1) step one shared engine (`SharedSteps`). So the MCTS driver's batches, each as long
as its slowest rollout, overlap instead of leaving the engine idle at every batch's tail.
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
engine core down (its processes end, which frees their GPU memory), tears down vLLM's distributed
state, collects garbage and empties the CUDA cache, then builds a new `LLM` from the folder. The
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

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmc_ray.config import EngineConfig
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


def llm_kwargs(cfg: EngineConfig) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments (all but `model`) of an engine config."""
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
    if cfg.min_pixels is not None and cfg.max_pixels is not None:
        kwargs["mm_processor_kwargs"] = {"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels}
    return kwargs


@dataclass
class PreparedBatch:
    """What goes to vLLM: one prompt and its sampling parameters per runnable request (`index` says
    which), and the requests that failed before reaching it (`errors`: request index → reason)."""

    prompts: list[dict[str, Any]] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)


def prepare(requests: Sequence[GenerationRequest], tokenizer: Any, decode: Callable[[bytes], Any],
            stop_token_ids: Sequence[int] = (), make_params: Callable[..., Any] = dict) -> PreparedBatch:
    """vLLM prompts for `requests`. `decode` turns image bytes into a PIL image and `make_params`
    sampling kwargs into `vllm.SamplingParams`; a ValueError from either fails that request only.
    Each distinct image is decoded once per call."""
    batch = PreparedBatch()
    decoded: dict[bytes, Any] = {}
    for r, req in enumerate(requests):
        try:
            for b in req.images:
                if b not in decoded:
                    decoded[b] = decode(b)
            params = make_params(**sampling_kwargs(req, stop_token_ids))
        except ValueError as e:
            batch.errors[r] = str(e)
            continue
        images = [decoded[b] for b in req.images]
        prompt: dict[str, Any] = {"prompt": chat_prompt(tokenizer, req.messages, req.assistant_prefix)}
        if images:
            prompt["multi_modal_data"] = {"image": images}
        batch.prompts.append(prompt)
        batch.params.append(params)
        batch.index.append(r)
    return batch


@dataclass
class _Call:
    """One `SharedSteps.run` call: its prompts, what vLLM holds of them, what came back."""

    prompts: Sequence[Any]
    params: Sequence[Any]
    ids: list[str | ValueError] = field(default_factory=list)
    waiting: set[str] = field(default_factory=set)
    outputs: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    enqueued: bool = False

    @property
    def done(self) -> bool:
        return self.error is not None or (self.enqueued and not self.waiting)


class SharedSteps:
    """Generate calls from several threads share one vLLM engine as one continuous batch.

    A call hands its prompts in and waits. Whichever waiting call finds nobody stepping becomes the
    stepper: it enqueues every call's new prompts (`enqueue(prompt, params)` → id; a ValueError
    rejects that prompt alone: sampling parameters vLLM refuses, a prompt longer than
    `max_model_len`), runs one engine step, hands the finished outputs to their calls and wakes them;
    a call returns as soon as its last output is in. So new work joins the batch at the next step
    whoever steps, only one thread ever touches the engine, and a batch that waits on its slowest
    sequence no longer leaves the engine idle: the other calls' sequences fill it. `step()` returns
    finished `RequestOutput`s only (vLLM's `FINAL_ONLY`, which `LLM.enqueue` sets). An exception
    from it is an engine failure: every call in flight raises it, and their requests are aborted."""

    def __init__(self, enqueue: Callable[[Any, Any], str], step: Callable[[], Sequence[Any]],
                 has_unfinished: Callable[[], bool], abort: Callable[[list[str]], None]) -> None:
        self._enqueue, self._step, self._has_unfinished, self._abort = enqueue, step, has_unfinished, abort
        self._cv = threading.Condition()
        self._stepping = False
        self._incoming: list[_Call] = []
        self._owner: dict[str, _Call] = {}  # request id in vLLM -> its call

    def run(self, prompts: Sequence[Any], params: Sequence[Any]) -> list[Any]:
        """One output per prompt, or the ValueError that rejected it."""
        call = _Call(prompts, params)
        with self._cv:
            self._incoming.append(call)
            while not call.done:
                if self._stepping:
                    self._cv.wait()
                else:
                    self._step_once()
        if call.error is not None:
            raise call.error
        return [i if isinstance(i, ValueError) else call.outputs[i] for i in call.ids]

    def _step_once(self) -> None:
        """Called holding the condition's lock; releases it while touching the engine."""
        self._stepping = True
        incoming, self._incoming = self._incoming, []
        self._cv.release()
        try:
            try:
                for c in incoming:
                    self._enqueue_call(c)
                outputs = self._step() if self._has_unfinished() else ()
            finally:
                self._cv.acquire()
                self._stepping = False
                self._cv.notify_all()
        except BaseException as e:
            self._fail_all(incoming, e)
            return
        for output in outputs:
            call = self._owner.pop(output.request_id)
            call.waiting.discard(output.request_id)
            call.outputs[output.request_id] = output
        if self._owner and not self._has_unfinished():
            self._fail_all([], RuntimeError(f"vLLM has no unfinished requests, yet {len(self._owner)} "
                                            f"of ours never finished"))

    def _enqueue_call(self, call: _Call) -> None:
        for prompt, param in zip(call.prompts, call.params, strict=True):
            try:
                request_id = self._enqueue(prompt, param)
            except ValueError as e:
                call.ids.append(e)
                continue
            call.ids.append(request_id)
            call.waiting.add(request_id)
            self._owner[request_id] = call
        call.enqueued = True

    def _fail_all(self, incoming: list[_Call], error: BaseException) -> None:
        calls = {id(c): c for c in [*incoming, *self._owner.values()]}.values()
        lost = list(self._owner)
        self._owner.clear()
        for c in calls:
            c.error = error
        self._abort(lost)


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
    """One result per request, in request order, from `SharedSteps.run`'s outputs (or the
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


def external_id(request_id: str) -> str:
    """The id vLLM's outputs carry for a request `LLM.enqueue` returned as `request_id`: enqueue gives
    the internal id (the LLM's counter, a decimal, plus `-` and a random suffix unless vLLM's
    randomisation is off), outputs the counter alone."""
    return request_id.rsplit("-", 1)[0]


class VLLMEngine:
    """A local HF-format VLM served by vLLM. `reload(path)` swaps in newly exported weights;
    concurrent `generate` calls run as one continuous batch (`SharedSteps`)."""

    name = "vllm"

    def __init__(self, cfg: EngineConfig, **engine_kwargs: Any) -> None:
        """`engine_kwargs` go to `vllm.LLM` on top of the config's (e.g. `enforce_eager=True`)."""
        if cfg.device == "auto":
            import torch

            cfg = replace(cfg, device="cuda" if torch.cuda.is_available() else "cpu")
        if cfg.device == "cpu":
            # vLLM's CPU build sizes its KV cache from this variable only (its engine-core process
            # inherits it); without it vLLM refuses to start on a shared host.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.vllm.cpu_kv_cache_gib)
        self._device = cfg.device
        self._vllm = _import_vllm()
        self._llm_kwargs = {**llm_kwargs(cfg), **engine_kwargs}
        self._gate = CallGate()
        self.llm: Any = None
        self.tokenizer: Any = None
        self.model_path = ""
        self._load(check_model_dir(cfg.model_path))

    @classmethod
    def from_config(cls, cfg: EngineConfig, **engine_kwargs: Any) -> VLLMEngine:
        return cls(cfg, **engine_kwargs)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Thread-safe; calls made at once share the engine's batch."""
        from mmc_ray.models.loading import decode_image

        with self._gate.shared():
            if self.llm is None:
                raise RuntimeError("the vLLM engine is closed (or its last reload failed)")
            batch = prepare(requests, self.tokenizer, decode_image, self._stop_token_ids,
                            self._vllm.SamplingParams)
            return assemble(requests, batch, self._steps.run(batch.prompts, batch.params))

    def reload(self, model_path: str | Path) -> None:
        """Replace the model with the one in `model_path` (see the module docstring)."""
        path = check_model_dir(model_path)
        with self._gate.exclusive():
            self._shutdown()
            self._load(path)

    def close(self) -> None:
        """Stop the engine and free its GPU memory."""
        with self._gate.exclusive():
            self._shutdown()

    def _load(self, path: Path) -> None:
        from transformers import AutoTokenizer

        if self._device == "cpu":
            check_cpu_head_dim(path)

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        llm = self._vllm.LLM(model=str(path), **self._llm_kwargs)
        engine = llm.llm_engine
        self._steps = SharedSteps(
            enqueue=lambda prompt, params: external_id(llm.enqueue([prompt], [params], use_tqdm=False)[0]),
            step=engine.step, has_unfinished=engine.has_unfinished_requests, abort=engine.abort_request)
        self.llm, self.tokenizer, self.model_path = llm, tokenizer, str(path)
        self._stop_token_ids = end_token_ids(tokenizer)

    def _shutdown(self) -> None:
        llm, self.llm = self.llm, None
        if llm is None:
            return
        engine_core = getattr(llm.llm_engine, "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()  # ends the engine-core (and TP worker) processes holding the GPU
        del llm, self._steps
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # model-parallel groups, gc, CUDA cache
