"""One Ray actor class per role, all sharing `RoleWorker`: an engine plus control methods.

Generation and control run in separate concurrency groups, so `health()` answers and `reload()`
can be called while a long batch is generating (weight sync never queues behind generation). The
generation group runs `concurrent_batches` batches at once (vLLM steps them as one batch).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import ray

from mmc_ray.config import EngineConfig
from mmc_ray.engine_protocol import GenerationRequest, GenerationResult, ReloadsInPlace, ScoresContinuations
from mmc_ray.engines.factory import build_engine


def concurrency_groups(cfg: EngineConfig) -> dict[str, int]:
    return {"generate": cfg.batches_in_flight(), "control": 1}


class RoleWorker:
    role = "worker"

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.engine = build_engine(cfg)
        self.version = 0
        self.started_at = time.time()
        self.requests_served = 0
        self._batches = 0
        self.peak_batches = 0  # most batches generating at once (up to cfg.batches_in_flight())
        self._swap = threading.Lock()

    @ray.method(concurrency_group="generate")
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        with self._swap:
            engine = self.engine
            self._batches += 1
            self.peak_batches = max(self.peak_batches, self._batches)
        served = 0
        try:
            results = engine.generate(requests)
            served = len(requests)
        finally:
            with self._swap:  # concurrent batches update these from several threads
                self._batches -= 1
                self.requests_served += served
        return results

    @ray.method(concurrency_group="generate")
    def score(self, request: GenerationRequest, continuations: Sequence[str]) -> list[float]:
        """The engine's log-probability of each continuation (`ScoresContinuations` engines only)."""
        engine = self.engine
        if not isinstance(engine, ScoresContinuations):
            raise TypeError(f"the {engine.name} engine does not score continuations")
        return engine.score(request, continuations)

    @ray.method(concurrency_group="control")
    def health(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "engine": self.engine.name,
            "model_path": self.cfg.model_path,
            "version": self.version,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "uptime_s": time.time() - self.started_at,
            "requests_served": self.requests_served,
            "peak_batches": self.peak_batches,
        }

    @ray.method(concurrency_group="control")
    def reload(self, model_path: str) -> int:
        """Load a new model folder and switch to it; batches in flight finish on the old engine.
        An engine with its own `reload` (vLLM: two copies would not fit on the GPU) swaps in place
        after its batch in flight, and new batches wait for the new model."""
        cfg = replace(self.cfg, model_path=model_path)
        if isinstance(self.engine, ReloadsInPlace):
            self.engine.reload(model_path)
            with self._swap:
                self.cfg = cfg
                self.version += 1
            return self.version
        engine = build_engine(cfg)
        with self._swap:
            self.cfg, self.engine = cfg, engine
            self.version += 1
        return self.version


class PolicyWorker(RoleWorker):
    """The actor (policy) VLM that MCTS expands and rolls out."""

    role = "policy"


class CriticWorker(RoleWorker):
    """The critic VLM that refinement asks for critiques; `reload` swaps in a newly trained one."""

    role = "critic"
