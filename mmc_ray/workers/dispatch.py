"""Where a batch of generation requests runs: in this process, or on a pool of Ray workers.

The search driver only submits batches and waits for whichever finish first, so the same driver
runs a laptop test, a benchmark baseline and a GPU cluster.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import TYPE_CHECKING, Any, Protocol

from mmc_ray.generation import GenerationEngine, GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from mmc_ray.config import EngineConfig

Outcome = list[GenerationResult] | BaseException


class WorkerLost(RuntimeError):
    """The worker actor died while holding the batch (Ray restarts it up to `max_restarts`)."""


class Dispatcher(Protocol):
    capacity: int  # batches that may be in flight at once

    def submit(self, batch: Sequence[GenerationRequest]) -> int: ...

    def wait(self) -> list[tuple[int, Outcome]]:
        """Block until at least one submitted batch finishes; return every finished one."""
        ...


class LocalDispatcher:
    """Runs batches on an engine in this process: one at a time when waited for, or with
    `concurrency` > 1 up to that many at once on threads, for an engine whose concurrent calls share
    one batch (`VLLMEngine`). An engine failure propagates from `wait`, as from the engine."""

    def __init__(self, engine: GenerationEngine, concurrency: int = 1) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.engine = engine
        self.capacity = concurrency
        self._tickets = itertools.count()
        self._pending: list[tuple[int, Sequence[GenerationRequest]]] = []
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="local-dispatch") \
            if concurrency > 1 else None
        self._running: dict[Future[list[GenerationResult]], int] = {}

    def submit(self, batch: Sequence[GenerationRequest]) -> int:
        ticket = next(self._tickets)
        if self._threads is None:
            self._pending.append((ticket, batch))
        else:
            self._running[self._threads.submit(self.engine.generate, batch)] = ticket
        return ticket

    def wait(self) -> list[tuple[int, Outcome]]:
        if self._threads is None:
            done, self._pending = self._pending, []
            return [(ticket, self.engine.generate(batch)) for ticket, batch in done]
        finished, _ = futures_wait(self._running, return_when=FIRST_COMPLETED)
        return [(self._running.pop(future), future.result()) for future in finished]


class RayDispatcher:
    """Sends each batch to the least-loaded worker actor; a worker can hold `inflight_per_worker`
    batches so it never idles between one result and the next request (`for_engines`: its engine's
    `concurrent_batches` + 1, that many generating, one waiting). A failed batch (worker
    died, engine raised) comes back as its exception for the driver to retry."""

    def __init__(self, workers: Sequence[Any], inflight_per_worker: int = 2) -> None:
        if not workers:
            raise ValueError("RayDispatcher needs at least one worker")
        self.workers = list(workers)
        self.capacity = len(self.workers) * inflight_per_worker
        self._tickets = itertools.count()
        self._inflight: dict[Any, tuple[int, int]] = {}  # object ref -> (ticket, worker index)
        self._load = [0] * len(self.workers)

    @classmethod
    def for_engines(cls, workers: Sequence[Any], cfg: EngineConfig) -> RayDispatcher:
        """Batches per worker from its engine config: `concurrent_batches` generating, one waiting."""
        return cls(workers, inflight_per_worker=cfg.batches_in_flight() + 1)

    def submit(self, batch: Sequence[GenerationRequest]) -> int:
        index = min(range(len(self.workers)), key=self._load.__getitem__)
        ticket = next(self._tickets)
        self._inflight[self.workers[index].generate.remote(list(batch))] = (ticket, index)
        self._load[index] += 1
        return ticket

    def wait(self) -> list[tuple[int, Outcome]]:
        import ray

        refs = list(self._inflight)
        ready, rest = ray.wait(refs, num_returns=1)
        if rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        finished = []
        for ref in ready:
            ticket, index = self._inflight.pop(ref)
            self._load[index] -= 1
            try:
                finished.append((ticket, ray.get(ref)))
            except ray.exceptions.RayActorError as e:
                finished.append((ticket, WorkerLost(str(e))))
            except ray.exceptions.RayError as e:
                finished.append((ticket, e))
        return finished
