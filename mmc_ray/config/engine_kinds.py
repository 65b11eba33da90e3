"""Every engine kind, what it is and what it can do: the one place that knows them.

The factory builds an engine from its kind's `engine` path; preflight asks what a kind needs before
it starts; worker pools, the flywheel and the reports ask what it can do. Nothing else compares a
kind's name (tests/unit/test_engine_kinds.py fails on a `kind == "..."` anywhere else), so a new kind
(a LoRA-aware engine, say) is one entry here and its engine module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EngineKind = Literal["hf", "simulated", "rule", "blind", "openai", "vllm"]


@dataclass(frozen=True)
class ModuleNeed:
    """A Python module a kind imports where it runs, and how to get it."""

    module: str
    label: str
    install: str


@dataclass(frozen=True)
class EngineKindSpec:
    name: str
    what: str
    engine: str  # "module:callable" building the engine from an EngineConfig, imported when built
    local_model: bool = False  # loads `model_path` (a Hugging Face folder) in its own process
    scores_continuations: bool = False  # implements `ScoresContinuations` (known before it is built)
    served: bool = False  # a server elsewhere does the work: runs in the caller's process, no Ray workers
    needs: ModuleNeed | None = None
    concurrent_batches: bool = False  # several generate calls of one worker share one running batch
    adapters: bool = False  # loads LoRA adapters on its base model and picks one per request
    section: str = ""  # the EngineConfig section only this kind reads


ENGINE_KINDS: dict[str, EngineKindSpec] = {spec.name: spec for spec in (
    EngineKindSpec("hf", "transformers", "mmc_ray.engines.hf:HFEngine.from_config", local_model=True,
                   scores_continuations=True, adapters=True),
    EngineKindSpec("vllm", "vLLM (GPU; its CPU build in the vLLM tier)",
                   "mmc_ray.engines.vllm:VLLMEngine.from_config",
                   local_model=True, concurrent_batches=True, adapters=True, section="vllm",
                   needs=ModuleNeed("vllm", "vLLM",
                                    "pip install 'mmc-ray[gpu]' on CUDA; make setup-vllm for the CPU build")),
    EngineKindSpec("simulated", "the synthetic tasks' solver",
                   "mmc_ray.engines.simulated:SimulatedActorEngine.from_config", section="simulator"),
    EngineKindSpec("rule", "oracle critic from ground truth",
                   "mmc_ray.engines.rule_critic:RuleCriticEngine.from_config"),
    EngineKindSpec("blind", "a critic that sends every answer back: the always-revise baseline",
                   "mmc_ray.engines.blind_critic:BlindCriticEngine.from_config"),
    EngineKindSpec("openai", "an OpenAI-compatible server", "mmc_ray.engines.openai:OpenAIEngine.from_config",
                   served=True, section="openai"),
)}


def engine_kind(name: str) -> EngineKindSpec:
    """The spec of a kind (a config has been validated, so the name is known)."""
    try:
        return ENGINE_KINDS[name]
    except KeyError:
        known = ", ".join(f"{spec.name} ({spec.what})" for spec in ENGINE_KINDS.values())
        raise ValueError(f"unknown engine kind {name!r}; one of: {known}") from None
