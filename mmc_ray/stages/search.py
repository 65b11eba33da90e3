"""The search stage: MCTS over many problems at once, batched across trees.

The driver keeps up to `search.max_active_trees` trees open, pools the requests they emit into
batches of `search.requests_per_call`, and hands batches to the dispatcher as soon as it has room,
so workers never wait for the slowest tree. A finished tree becomes one row (`TREE_SCHEMA`) the
moment it is done. A failed batch goes through the `RetryPolicy`: sent again; an engine error that
persists becomes failed generations, counted in their tree; a worker lost again and again stops the
search with `CapacityLost` (finished trees are kept, the open ones are searched again on rerun).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from mmc_ray.config import SearchConfig
from mmc_ray.dashboard_metrics import StageMetrics
from mmc_ray.engine_protocol import GenerationRequest, GenerationResult
from mmc_ray.errors import BadInput
from mmc_ray.mcts.tree import Generation, SearchRequest, SearchResult, SearchTree, Verdict
from mmc_ray.schemas import TREE_SCHEMA
from mmc_ray.store.layout import TREES
from mmc_ray.store.shards import ShardWriter, finished_ids
from mmc_ray.tasks.problem import Problem, image_error
from mmc_ray.tasks.prompts import solve_request
from mmc_ray.tasks.scoring import answers_match, extract_answer
from mmc_ray.workers.dispatch import Attempts, Dispatcher, RetryPolicy, WorkerLost

log = logging.getLogger(__name__)


class ProgressLine(Protocol):
    """What the driver reports progress to (tqdm's interface)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **values: Any) -> Any: ...


class SearchStopped(RuntimeError):
    """The caller asked a running search to stop (its finished trees are kept)."""


def search_judge(problem: Problem) -> Callable[[str], Verdict]:
    """Verdicts on finished reasoning: only an explicit answer counts (see `explicit_only`)."""
    def judge(text: str) -> Verdict:
        answer = extract_answer(text, problem.choices, explicit_only=True)
        return Verdict(answer, answers_match(answer, problem.answer, problem.answer_type, problem.choices))
    return judge


def to_generation_request(problem: Problem, request: SearchRequest, cfg: SearchConfig) -> GenerationRequest:
    return solve_request(problem, n=request.n, temperature=cfg.temperature, top_p=cfg.top_p,
                         max_new_tokens=request.max_new_tokens, seed=request.seed,
                         assistant_prefix=request.prefix,
                         stop=("\n",) if request.kind == "expand" else ())


def to_search_result(request: SearchRequest, result: GenerationResult | None) -> SearchResult:
    """An engine result as the tree sees it; `None` (the batch kept failing) fails every sample."""
    if result is None:
        return SearchResult(request.request_id, tuple(Generation("", 0, failed=True)
                                                      for _ in range(request.n)))
    return SearchResult(request.request_id, tuple(
        Generation(c.text, c.completion_tokens, failed=c.finish_reason == "error")
        for c in result.completions))


def tree_row(problem: Problem, tree: SearchTree) -> dict[str, Any]:
    stats = tree.stats()
    return {
        **problem.to_row(),
        "simulations": stats["simulations"],
        "num_nodes": stats["nodes"],
        "generated_tokens": stats["tokens"],
        "terminal_correct": stats["terminal_correct"],
        "terminal_wrong": stats["terminal_wrong"],
        "invalid_nodes": stats["invalid_nodes"],
        "failed_generations": stats["failed_generations"],
        "root_value": stats["root_value"],
        "nodes": tree.to_rows(),
    }


@dataclass
class SearchSummary:
    trees: int = 0
    expansions: int = 0
    rollouts: int = 0
    tokens: int = 0
    engine_calls: int = 0
    failed_batches: int = 0
    worker_restarts: int = 0  # batches lost with their worker (Ray restarts the actor)
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (problem_id, reason)
    resumed: int = 0  # trees found already finished in the output

    @property
    def expansions_per_s(self) -> float:
        return self.expansions / self.seconds if self.seconds else 0.0


@dataclass
class _Pending:
    problem_id: str
    request: SearchRequest
    attempts: Attempts = field(default_factory=Attempts)


class _Driver:
    """State of one `run_search` call; see the module docstring."""

    def __init__(self, problems: Iterable[Problem], dispatcher: Dispatcher, cfg: SearchConfig,
                 on_tree_done: Callable[[Problem, SearchTree], None], bar: ProgressLine,
                 stop: threading.Event | None, retry: RetryPolicy) -> None:
        self.problems = iter(problems)
        self.retry = retry
        self.stop = stop
        self.dispatcher = dispatcher
        self.cfg = cfg
        self.on_tree_done = on_tree_done
        self.bar = bar
        self.active: dict[str, tuple[Problem, SearchTree]] = {}
        self.to_poll: dict[str, None] = {}  # ordered set
        self.queue: deque[_Pending] = deque()
        self.inflight: dict[int, list[_Pending]] = {}
        self.summary = SearchSummary()
        self.metrics = StageMetrics("search", counters=("expansions", "rollouts", "generated_tokens",
                                                        "trees_done", "failed_batches", "worker_restarts"),
                                    gauges=("active_trees", "queue_depth"))
        self.out_of_problems = False

    def run(self) -> SearchSummary:
        start = time.perf_counter()
        while True:
            if self.stop is not None and self.stop.is_set():
                raise SearchStopped(f"search stopped with {len(self.active)} trees open")
            self._admit()
            self._poll()
            self._dispatch()
            self.metrics.set("active_trees", len(self.active))
            self.metrics.set("queue_depth", len(self.queue))
            if not self.inflight:
                # Every open tree has its requests queued or in flight, and the queue drains
                # whenever there is room; open trees with nothing in flight would be a bug.
                if self.active:
                    raise RuntimeError(f"search stalled: {len(self.active)} open trees, nothing in flight")
                if self.out_of_problems:
                    break
                continue
            for ticket, outcome in self.dispatcher.wait():
                self._receive(self.inflight.pop(ticket), outcome)
            elapsed = time.perf_counter() - start
            self.bar.set_postfix(exp_per_s=f"{self.summary.expansions / elapsed:.1f}", refresh=False)
        self.summary.seconds = time.perf_counter() - start
        return self.summary

    def _admit(self) -> None:
        while not self.out_of_problems and len(self.active) < self.cfg.max_active_trees:
            problem = next(self.problems, None)
            if problem is None:
                self.out_of_problems = True
            elif problem.image is not None and (reason := image_error(problem.image)):
                log.warning("search: skipping problem %s: broken image (%s)", problem.problem_id, reason)
                self.summary.skipped.append((problem.problem_id, f"broken image: {reason}"))
                self.bar.update(1)
            elif problem.problem_id in self.active:
                raise BadInput(f"problem id {problem.problem_id!r} appears twice in the input")
            else:
                tree = SearchTree(problem.problem_id, self.cfg, search_judge(problem), self.cfg.seed)
                self.active[problem.problem_id] = (problem, tree)
                self.to_poll[problem.problem_id] = None

    def _poll(self) -> None:
        for problem_id in self.to_poll:
            problem, tree = self.active[problem_id]
            if tree.done:
                self._finish(problem, tree)
            else:
                self.queue.extend(_Pending(problem_id, r) for r in tree.next_requests())
        self.to_poll.clear()

    def _dispatch(self) -> None:
        while self.queue and len(self.inflight) < self.dispatcher.capacity:
            size = min(self.cfg.requests_per_call, len(self.queue))
            batch = [self.queue.popleft() for _ in range(size)]
            ticket = self.dispatcher.submit(
                [to_generation_request(self.active[p.problem_id][0], p.request, self.cfg) for p in batch])
            self.inflight[ticket] = batch
            self.summary.engine_calls += 1

    def _receive(self, batch: list[_Pending], outcome: list[GenerationResult] | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.summary.failed_batches += 1
            self.metrics.inc("failed_batches")
            if isinstance(outcome, WorkerLost):
                self.summary.worker_restarts += 1
                self.metrics.inc("worker_restarts")
            again = [self.retry.again(outcome, pending.attempts) for pending in batch]
            log.warning("search: a batch of %d requests failed (%s); %s", len(batch), outcome,
                        "sent again" if all(again) else "its generations are recorded as failed")
            for pending, resend in zip(batch, again, strict=True):
                if resend:
                    self.queue.appendleft(pending)
                else:
                    self._apply(pending, None)
            return
        for pending, result in zip(batch, outcome, strict=True):
            self._apply(pending, result)

    def _apply(self, pending: _Pending, result: GenerationResult | None) -> None:
        search_result = to_search_result(pending.request, result)
        _, tree = self.active[pending.problem_id]
        tree.apply([search_result])
        tokens = sum(g.tokens for g in search_result.generations)
        if pending.request.kind == "expand":
            self.summary.expansions += 1
            self.metrics.inc("expansions")
        else:
            self.summary.rollouts += len(search_result.generations)
            self.metrics.inc("rollouts", len(search_result.generations))
        self.summary.tokens += tokens
        self.metrics.inc("generated_tokens", tokens)
        self.to_poll[pending.problem_id] = None

    def _finish(self, problem: Problem, tree: SearchTree) -> None:
        del self.active[problem.problem_id]
        self.on_tree_done(problem, tree)
        self.summary.trees += 1
        self.metrics.inc("trees_done")
        self.bar.update(1)


def run_search(problems: Sequence[Problem] | Iterable[Problem], dispatcher: Dispatcher, cfg: SearchConfig,
               on_tree_done: Callable[[Problem, SearchTree], None], progress: bool = True,
               total: int | None = None, stop: threading.Event | None = None,
               retry: RetryPolicy = RetryPolicy(), bar: ProgressLine | None = None) -> SearchSummary:
    """Search every problem; `on_tree_done(problem, tree)` is called as each tree finishes. Setting
    `stop` raises `SearchStopped` once the batches in flight come back. Progress goes to a tqdm bar
    of its own, or to `bar` (a line the caller shares between stages)."""
    total = len(problems) if total is None and isinstance(problems, Sequence) else total
    with (tqdm(total=total, desc="search", unit="tree", disable=not progress) if bar is None
          else contextlib.nullcontext(bar)) as line:
        return _Driver(problems, dispatcher, cfg, on_tree_done, line, stop, retry).run()


def search_to_dir(problems: Sequence[Problem], dispatcher: Dispatcher, cfg: SearchConfig,
                  out_dir: str | Path, progress: bool = True, stop: threading.Event | None = None,
                  bar: ProgressLine | None = None, retry: RetryPolicy = RetryPolicy()) -> SearchSummary:
    """Search into `out_dir/trees-NNNNN.parquet`, skipping problems already there (resume)."""
    done = finished_ids(out_dir, TREES, "problem_id")
    todo = [p for p in problems if p.problem_id not in done]
    writer = ShardWriter(out_dir, TREES, TREE_SCHEMA, cfg.shard_size, key="problem_id")
    try:
        summary = run_search(todo, dispatcher, cfg, lambda p, t: writer.add(tree_row(p, t)), progress,
                             stop=stop, retry=retry, bar=bar)
    finally:
        writer.flush()  # keep every finished tree, even when the run is interrupted
    summary.resumed = len(problems) - len(todo)
    return summary
