"""Engines from their config: the kind's entry in `config.engine_kinds` names the engine; backends are
imported lazily so that `import mmc_ray` needs neither torch nor vLLM."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from mmc_ray.config import EngineConfig
from mmc_ray.config.engine_kinds import engine_kind
from mmc_ray.engine_protocol import GenerationEngine


def engine_constructor(kind: str) -> Callable[[EngineConfig], GenerationEngine]:
    """What builds an engine of `kind` from its config (importing its backend)."""
    module, _, path = engine_kind(kind).engine.partition(":")
    target: Any = importlib.import_module(module)
    for name in path.split("."):
        target = getattr(target, name)
    return target


def build_engine(cfg: EngineConfig) -> GenerationEngine:
    return engine_constructor(cfg.kind)(cfg)


def engine_source(cfg: EngineConfig) -> str:
    """What answers for an engine, for reports: its local model's path, its server's URL, or the
    kind itself (`simulated`, `rule`, `blind`)."""
    kind = engine_kind(cfg.kind)
    return cfg.model_path if kind.local_model else cfg.openai.base_url if kind.served else kind.name
