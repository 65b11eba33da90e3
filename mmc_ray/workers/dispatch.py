"""Where a batch of generation requests runs: in this process, or on a pool of Ray workers.

The search driver only submits batches and waits for whichever finish first, so the same driver
runs a laptop test, a benchmark baseline and a GPU cluster.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mmc_ray.engine_protocol import GenerationEngine, GenerationRequest, GenerationResult
from mmc_ray.errors import CapacityFailure

if TYPE_CHECKING:
    from mmc_ray.config import EngineConfig, ResourcesConfig

Outcome = list[GenerationResult] | BaseException


class WorkerLost(RuntimeError):
    """Infra, not the batch's fault: the batch's worker actor is restarting (`restarting`: Ray's
    `ActorUnavailableError`, also what a batch in flight when the actor died gets while Ray restarts
    it, up to `max_restarts`), or it is dead for good, or its node or the result is lost."""

    def __init__(self, message: str, restarting: bool = False) -> None:
        super().__init__(message)
        self.restarting = restarting


class CapacityLost(CapacityFailure):
    """A batch's workers kept dying: they are dead past their restarts (or their node is gone).
    Raised, never turned into failed generations: what is finished is kept and a rerun goes on."""


@dataclass
class Attempts:
    """One batch's failures so far, kept by whoever resends it (see `RetryPolicy.again`)."""

    counted: int = 0  # failures that used up an attempt
    restarting_since: float | None = None  # monotonic time of its first failure to a restarting worker


@dataclass(frozen=True)
class RetryPolicy:
    """What a failed batch becomes, with the two causes told apart (as NeMo-RL separates them):
    - infra (`WorkerLost`): sent again. A worker that is restarting costs no attempt (it comes back),
      but a batch waits for restarts at most `restart_wait_s` in all; a worker dead for good (or a
      lost node or result) costs one, and after `lost_worker_attempts` such losses `CapacityLost` is
      raised: a generation that never ran is no verdict on its input, so it is never a result.
    - data (the engine raised on this batch): sent again up to `engine_error_attempts` times in all,
      then its requests become error results, so one input the engine cannot take never stops a run.
    """

    lost_worker_attempts: int = 4
    engine_error_attempts: int = 3
    restart_wait_s: float = 300.0

    @classmethod
    def for_role(cls, resources: ResourcesConfig) -> RetryPolicy:
        return cls(restart_wait_s=resources.restart_wait_s)

    def again(self, failure: BaseException, attempts: Attempts) -> bool:
        """Record `failure` in the batch's `attempts` and say whether the batch is sent again; False:
        give its requests error results. Raises `CapacityLost` when capacity is gone."""
        if isinstance(failure, WorkerLost) and failure.restarting:
            now = time.monotonic()
            attempts.restarting_since = attempts.restarting_since or now
            waited = now - attempts.restarting_since
            if waited > self.restart_wait_s:
                raise CapacityLost(f"a batch waited {waited:.0f} s for its worker to restart (resources."
                                   f"restart_wait_s={self.restart_wait_s:g}; last: {failure})") from failure
            return True
        attempts.counted += 1
        if isinstance(failure, WorkerLost):
            if attempts.counted >= self.lost_worker_attempts:
                raise CapacityLost(f"a batch lost its worker {attempts.counted} times (last: {failure}); "
                                   "the workers are dead past their max_restarts or their node is gone"
                                   ) from failure
            return True
        return attempts.counted < self.engine_error_attempts


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
    """Sends each batch to the least-loaded worker actor that is up; a worker can hold
    `inflight_per_worker` batches so it never idles between one result and the next request
    (`for_engines`: its engine's `concurrent_batches` + 1, that many generating, one waiting).

    A failed batch comes back as its exception for the caller's `RetryPolicy`: `WorkerLost` when Ray
    lost the worker or the batch's result (infra), the engine's error as Ray wraps it (`RayTaskError`)
    when the engine raised (data). A worker that lost a batch is *down*: it gets no batch while another
    is up (so retries go to live workers and capacity shrinks with it), and is probed with `health`
    until its restarted actor answers; when every worker is down, batches go to them again."""

    PROBE_EVERY_S = 1.0

    def __init__(self, workers: Sequence[Any], inflight_per_worker: int = 2) -> None:
        if not workers:
            raise ValueError("RayDispatcher needs at least one worker")
        self.workers = list(workers)
        self.inflight_per_worker = inflight_per_worker
        self._tickets = itertools.count()
        self._inflight: dict[Any, tuple[int, int]] = {}  # object ref -> (ticket, worker index)
        self._load = [0] * len(self.workers)
        self._down: set[int] = set()
        self._probes: dict[Any, int] = {}  # health call -> worker index
        self._last_probe = [0.0] * len(self.workers)

    @property
    def capacity(self) -> int:
        """Batches that may be in flight: the slots of the workers that are up (one worker's when none is)."""
        return self.inflight_per_worker * max(1, len(self.workers) - len(self._down))

    @classmethod
    def for_engines(cls, workers: Sequence[Any], cfg: EngineConfig) -> RayDispatcher:
        """Batches per worker from its engine config: `concurrent_batches` generating, one waiting."""
        return cls(workers, inflight_per_worker=cfg.batches_in_flight() + 1)

    def submit(self, batch: Sequence[GenerationRequest]) -> int:
        up = [i for i in range(len(self.workers)) if i not in self._down] or range(len(self.workers))
        index = min(up, key=self._load.__getitem__)
        ticket = next(self._tickets)
        self._inflight[self.workers[index].generate.remote(list(batch))] = (ticket, index)
        self._load[index] += 1
        return ticket

    def wait(self) -> list[tuple[int, Outcome]]:
        import ray

        finished: list[tuple[int, Outcome]] = []
        while not finished:
            self._probe_down_workers()
            ready, rest = ray.wait([*self._inflight, *self._probes], num_returns=1)
            if rest:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready += more
            for ref in ready:
                if ref in self._probes:
                    self._probe_answered(ref)
                    continue
                ticket, index = self._inflight.pop(ref)
                self._load[index] -= 1
                finished.append((ticket, self._outcome(ref, index)))
        return finished

    def _outcome(self, ref: Any, index: int) -> Outcome:
        import ray

        try:
            results = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the engine raised: the worker itself is fine
            return e
        except ray.exceptions.RayError as e:  # actor died or restarting, node lost, object lost, OOM
            self._down.add(index)
            restarting = isinstance(e, ray.exceptions.ActorUnavailableError)
            first_line = next(iter(str(e).strip().splitlines()), "")  # Ray appends pages of advice
            return WorkerLost(f"worker {index}: {type(e).__name__}: {first_line}", restarting=restarting)
        self._down.discard(index)
        return results

    def _probe_down_workers(self) -> None:
        now = time.monotonic()
        probing = set(self._probes.values())
        for index in self._down - probing:
            if self._load[index] == 0 and now - self._last_probe[index] >= self.PROBE_EVERY_S:
                self._last_probe[index] = now
                self._probes[self.workers[index].health.remote()] = index

    def _probe_answered(self, ref: Any) -> None:
        import ray

        index = self._probes.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            return  # still down: probed again in a while
        self._down.discard(index)
