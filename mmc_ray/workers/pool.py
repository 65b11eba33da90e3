"""`WorkerPoolEngine`: a worker group seen as one `GenerationEngine`, so code written against the
engine interface (refinement, generation) runs unchanged on a pool of Ray actors."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from mmc_ray.config import EngineConfig
from mmc_ray.config.engine_kinds import engine_kind
from mmc_ray.engine_protocol import (
    Closable,
    GenerationEngine,
    GenerationRequest,
    GenerationResult,
    error_result,
)
from mmc_ray.engines.factory import build_engine
from mmc_ray.workers.dispatch import Attempts, CapacityLost, RayDispatcher, RetryPolicy
from mmc_ray.workers.role_worker import RoleWorker

log = logging.getLogger(__name__)


class WorkerPoolEngine:
    """Splits each call into one chunk per worker (at most `max_chunk` requests each) and runs them
    in parallel. A failed chunk goes through the `RetryPolicy`, as a search batch does: sent again
    (Ray restarts a dead actor up to its `max_restarts`); an engine error that persists becomes error
    results for the chunk's requests; a worker lost again and again raises `CapacityLost`."""

    def __init__(self, workers: Sequence[Any], name: str, max_chunk: int = 64,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        self.name = name
        self.workers = list(workers)
        self.max_chunk = max_chunk
        self.retry = retry

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        dispatcher = RayDispatcher(self.workers, inflight_per_worker=1)
        size = min(self.max_chunk, math.ceil(len(requests) / len(self.workers)))
        chunks = {}  # ticket -> (start index, chunk, its failures so far)
        for start in range(0, len(requests), size):
            chunk = list(requests[start:start + size])
            chunks[dispatcher.submit(chunk)] = (start, chunk, Attempts())
        results: list[GenerationResult | None] = [None] * len(requests)
        while chunks:
            for ticket, outcome in dispatcher.wait():
                start, chunk, attempts = chunks.pop(ticket)
                if isinstance(outcome, BaseException):
                    try:
                        again = self.retry.again(outcome, attempts)
                    except CapacityLost as e:
                        raise CapacityLost(f"{self.name}: {e}") from outcome
                    if again:
                        chunks[dispatcher.submit(chunk)] = (start, chunk, attempts)
                        continue
                    log.warning("%s: a batch of %d requests failed %d times (%s); they get error results",
                                self.name, len(chunk), attempts.counted, outcome)
                    outcome = [error_result(r.n, f"{type(outcome).__name__}: {outcome}") for r in chunk]
                results[start:start + len(chunk)] = outcome
        return results  # type: ignore[return-value]


class ScoringWorkerPoolEngine(WorkerPoolEngine):
    """A pool whose engines score continuations (`ScoresContinuations`): the critic as a verifier
    (best-of-N) scores on the workers, each request on the next worker in turn. A worker lost mid-call
    raises: `best_of_n_to_dir` keeps the shards written before it and resumes from there."""

    def __init__(self, workers: Sequence[Any], name: str, max_chunk: int = 64,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        super().__init__(workers, name, max_chunk, retry)
        self._turn = itertools.cycle(range(len(self.workers)))

    def score(self, request: GenerationRequest, continuations: Sequence[str]) -> list[float]:
        import ray

        return ray.get(self.workers[next(self._turn)].score.remote(request, list(continuations)))


@contextmanager
def role_engine(worker_cls: type[RoleWorker], cfg: EngineConfig,
                local: bool = False) -> Iterator[GenerationEngine]:
    """The engine a role runs on: a pool of `worker_cls` Ray actors, or (with `local`, or for a
    remote OpenAI-compatible server, where the work happens elsewhere) an engine in this process.
    The workers are stopped on exit."""
    if local or engine_kind(cfg.kind).served:
        engine = build_engine(cfg)
        try:
            yield engine
        finally:
            if isinstance(engine, Closable):
                engine.close()
        return
    from mmc_ray.ray_runtime import init_ray
    from mmc_ray.workers.group import create_worker_group

    init_ray()
    group = create_worker_group(worker_cls, cfg)
    try:
        # known before any worker has loaded its model
        pool = ScoringWorkerPoolEngine if engine_kind(cfg.kind).scores_continuations else WorkerPoolEngine
        yield pool(group.workers, name=f"{worker_cls.role}[{cfg.kind}]x{len(group.workers)}",
                   max_chunk=cfg.max_batch_size * 4, retry=RetryPolicy.for_role(cfg.resources))
    finally:
        group.shutdown()
