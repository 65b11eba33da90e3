"""The only place that branches on engine kind; backends are imported lazily so that
`import mmc_ray` needs neither torch nor vLLM."""

from __future__ import annotations

from mmc_ray.config import EngineConfig
from mmc_ray.generation import GenerationEngine


def engine_scores(cfg: EngineConfig) -> bool:
    """Whether `build_engine(cfg)` scores continuations (`ScoresContinuations`), known without
    building it: a pool of Ray workers says so before any of them loads its model."""
    return cfg.kind == "hf"


def build_engine(cfg: EngineConfig) -> GenerationEngine:
    if cfg.kind == "hf":
        from mmc_ray.engines.hf import HFEngine

        return HFEngine.from_config(cfg)
    if cfg.kind == "simulated":
        from mmc_ray.engines.simulated import SimulatedActorEngine

        return SimulatedActorEngine(cfg.simulator)
    if cfg.kind == "rule":
        from mmc_ray.engines.rule_critic import RuleCriticEngine

        if not cfg.problems:
            return RuleCriticEngine()
        from mmc_ray.tasks.benchmark import load_problem_file

        by_id = {p.problem_id: p for p in load_problem_file(cfg.problems)}
        return RuleCriticEngine(problem_lookup=by_id.__getitem__)
    if cfg.kind == "blind":
        from mmc_ray.engines.blind_critic import BlindCriticEngine

        return BlindCriticEngine()
    if cfg.kind == "vllm":
        from mmc_ray.engines.vllm import VLLMEngine

        return VLLMEngine.from_config(cfg)
    if cfg.kind == "openai":
        from mmc_ray.engines.openai import OpenAIEngine

        return OpenAIEngine.from_config(cfg)
    raise ValueError(f"unknown engine kind {cfg.kind!r}")
