"""`VLLMEngine`: vLLM offline inference behind the `GenerationEngine` protocol (the `gpu` extra).

vLLM is imported only when an engine is constructed, so `import mmc_ray.engines.vllm` needs neither
vLLM nor torch. Everything between our requests and vLLM's objects is a pure function here
(`chat_prompt`, `sampling_kwargs`, `llm_kwargs`, `prepare`, `run_batch`, `to_result`, `assemble`),
tested on CPU with stand-ins shaped like vLLM's `RequestOutput`/`CompletionOutput`.

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

Scheduling is vLLM's: one `LLM.generate` call per `generate` (continuous batching, all `n` samples
of a request share its prompt's KV). `enable_prefix_caching` (on by default) keeps KV blocks of
earlier prompts: MCTS expands siblings from one path and rolls out each new node several times, so
most of a batch's prompt tokens (question, image tokens, the path so far) are computed once.

Tensor parallelism inside our Ray worker. `create_worker_group` gives each replica one placement-
group bundle, and the config requires `resources.num_gpus == tensor_parallel_size`; a bundle lies on
one node, so it holds all the replica's GPUs and Ray sets `CUDA_VISIBLE_DEVICES` of the worker to
them. vLLM then starts its tensor-parallel workers as local processes on those GPUs
(`distributed_executor_backend="mp"`; `"uni"`, in process, for one GPU). We name the backend: left
to itself, vLLM sees that it runs in a Ray placement group and picks its Ray executor, which would
try to place one worker per bundle whose GPU this actor already holds. OpenRLHF and veRL do it the
other way round: one bundle per GPU, the Ray executor, and `VLLM_RAY_BUNDLE_INDICES` to pin each
worker to its bundle. That is needed only for a replica larger than a node, which we do not support.

Reload. `reload(path)` picks up newly exported weights: it checks the folder, waits for the batch in
flight (one lock serialises generation and reload; new batches wait for the new model), shuts the
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmc_ray.config import EngineConfig
from mmc_ray.engines.base import (
    Completion,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    apply_stop,
    sampling_temperature,
)

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
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "distributed_executor_backend": "mp" if cfg.tensor_parallel_size > 1 else "uni",
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_model_len": cfg.max_model_len,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        # bf16 for "auto", as HFEngine on CUDA (vLLM's own "auto" turns fp32 checkpoints into fp16).
        "dtype": "bfloat16" if cfg.dtype == "auto" else cfg.dtype,
        "limit_mm_per_prompt": {"image": cfg.max_images_per_prompt},
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


def run_batch(generate: Callable[[list, list], Sequence[Any]], prompts: list, params: list) -> list[Any]:
    """One output per prompt from `generate(prompts, params)`. When vLLM rejects an input (it raises
    ValueError for the whole call), the prompts run one by one and each rejected one gets its
    ValueError in place of an output; any other exception is an engine failure and propagates."""
    if not prompts:
        return []
    try:
        return list(generate(prompts, params))
    except ValueError:
        pass
    outputs: list[Any] = []
    for prompt, param in zip(prompts, params, strict=True):
        try:
            outputs.append(generate([prompt], [param])[0])
        except ValueError as e:
            outputs.append(e)
    return outputs


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


def error_result(n: int, reason: str) -> GenerationResult:
    return GenerationResult(tuple(Completion("", "error", 0, error=reason) for _ in range(n)), 0)


def assemble(requests: Sequence[GenerationRequest], batch: PreparedBatch,
             outputs: Sequence[Any]) -> list[GenerationResult]:
    """One result per request, in request order, from `run_batch`'s outputs (or errors)."""
    results: dict[int, GenerationResult] = {r: error_result(requests[r].n, reason)
                                            for r, reason in batch.errors.items()}
    for r, output in zip(batch.index, outputs, strict=True):
        results[r] = (error_result(requests[r].n, f"vLLM rejected the request: {output}")
                      if isinstance(output, Exception) else to_result(output, requests[r].stop))
    return [results[r] for r in range(len(requests))]


def check_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path} (config.json missing); point model_path at a local "
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
        raise ValueError(f"{path}: attention head_dim {head_dim} < {CPU_MIN_HEAD_DIM}, which vLLM's CPU "
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


class VLLMEngine:
    """A local HF-format VLM served by vLLM. `reload(path)` swaps in newly exported weights."""

    name = "vllm"

    def __init__(self, cfg: EngineConfig, **engine_kwargs: Any) -> None:
        """`engine_kwargs` go to `vllm.LLM` on top of the config's (e.g. `enforce_eager=True`)."""
        if cfg.device == "auto":
            import torch

            cfg = replace(cfg, device="cuda" if torch.cuda.is_available() else "cpu")
        if cfg.device == "cpu":
            # vLLM's CPU build sizes its KV cache from this variable only (its engine-core process
            # inherits it); without it vLLM refuses to start on a shared host.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kv_cache_gib)
        self._device = cfg.device
        self._vllm = _import_vllm()
        self._llm_kwargs = {**llm_kwargs(cfg), **engine_kwargs}
        self._lock = threading.Lock()
        self.llm: Any = None
        self.tokenizer: Any = None
        self.model_path = ""
        self._load(check_model_dir(cfg.model_path))

    @classmethod
    def from_config(cls, cfg: EngineConfig, **engine_kwargs: Any) -> VLLMEngine:
        return cls(cfg, **engine_kwargs)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        from mmc_ray.models.loading import decode_image

        with self._lock:
            if self.llm is None:
                raise RuntimeError("the vLLM engine is closed (or its last reload failed)")
            batch = prepare(requests, self.tokenizer, decode_image, self._stop_token_ids,
                            self._vllm.SamplingParams)
            outputs = run_batch(lambda p, s: self.llm.generate(p, s, use_tqdm=False), batch.prompts,
                                batch.params)
            return assemble(requests, batch, outputs)

    def reload(self, model_path: str | Path) -> None:
        """Replace the model with the one in `model_path` (see the module docstring)."""
        path = check_model_dir(model_path)
        with self._lock:
            self._shutdown()
            self._load(path)

    def close(self) -> None:
        """Stop the engine and free its GPU memory."""
        with self._lock:
            self._shutdown()

    def _load(self, path: Path) -> None:
        from transformers import AutoTokenizer

        if self._device == "cpu":
            check_cpu_head_dim(path)

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.llm = self._vllm.LLM(model=str(path), **self._llm_kwargs)
        self.tokenizer, self.model_path = tokenizer, str(path)
        self._stop_token_ids = end_token_ids(tokenizer)

    def _shutdown(self) -> None:
        llm, self.llm = self.llm, None
        if llm is None:
            return
        engine_core = getattr(llm.llm_engine, "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()  # ends the engine-core (and TP worker) processes holding the GPU
        del llm
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # model-parallel groups, gc, CUDA cache
