"""The search driver with an in-process dispatcher: batching across trees, bad input, resume."""

import dataclasses
import io
import threading
import time

import pyarrow.parquet as pq
import pytest

from mmc_ray.config import SearchConfig, SimulatorConfig
from mmc_ray.engine_protocol import Completion, GenerationResult
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.mcts.tree import nodes_from_rows
from mmc_ray.stages.search import SearchStopped, run_search, search_to_dir
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.workers.dispatch import Attempts, CapacityLost, LocalDispatcher, RetryPolicy, WorkerLost

CFG = SearchConfig(num_simulations=6, expansion_width=3, rollouts_per_node=2, max_active_trees=16,
                   requests_per_call=32, shard_size=4)
SIM = SimulatorConfig(observe_error_rate=0.25, arithmetic_error_rate=0.1, operation_error_rate=0.05)


def problems(n=24):
    return list(generate_problems(n, seed=1))


class CountingDispatcher(LocalDispatcher):
    """Records batch sizes; can raise after `fail_after` batches (an interrupted run)."""

    def __init__(self, engine, fail_after=None):
        super().__init__(engine)
        self.sizes, self.trees_per_call, self.fail_after = [], [], fail_after

    def submit(self, batch):
        if self.fail_after is not None and len(self.sizes) >= self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        self.sizes.append(len(batch))
        self.trees_per_call.append(len({r.metadata["problem_id"] for r in batch}))
        return super().submit(batch)


def test_requests_from_many_trees_share_engine_calls():
    dispatcher = CountingDispatcher(SimulatedActorEngine(SIM))
    done = []
    summary = run_search(problems(), dispatcher, CFG, lambda p, t: done.append(t), progress=False)
    assert summary.trees == 24 and len(done) == 24
    assert max(dispatcher.sizes) <= CFG.requests_per_call
    assert max(dispatcher.trees_per_call) == CFG.max_active_trees  # one call serves every open tree
    assert summary.engine_calls < summary.expansions / 4
    both = sum(t.stats()["terminal_correct"] > 0 and t.stats()["terminal_wrong"] > 0 for t in done)
    assert both > 0  # divergent paths exist: what critique mining needs


class SlowSimulatedEngine(SimulatedActorEngine):
    """Thread-safe like `VLLMEngine`; records how many calls overlap."""

    def __init__(self, sim):
        super().__init__(sim)
        self.lock, self.running, self.peak = threading.Lock(), 0, 0

    def generate(self, requests):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.002)
        try:
            return super().generate(requests)
        finally:
            with self.lock:
                self.running -= 1


def test_batches_in_flight_at_once_search_the_same_trees():
    """`LocalDispatcher(concurrency=4)` keeps up to 4 small batches on the engine at once; the trees
    come out as with one batch at a time (each tree waits for its own requests only)."""
    cfg = dataclasses.replace(CFG, requests_per_call=4)
    one, four = {}, {}
    run_search(problems(), LocalDispatcher(SimulatedActorEngine(SIM)), cfg,
               lambda p, t: one.setdefault(p.problem_id, t.stats()), progress=False)
    engine = SlowSimulatedEngine(SIM)
    summary = run_search(problems(), LocalDispatcher(engine, concurrency=4), cfg,
                         lambda p, t: four.setdefault(p.problem_id, t.stats()), progress=False)
    assert summary.trees == 24 and four == one
    assert 1 < engine.peak <= 4


def test_local_dispatcher_refuses_no_concurrency():
    with pytest.raises(ValueError, match="concurrency"):
        LocalDispatcher(SimulatedActorEngine(SIM), concurrency=0)


def test_broken_images_are_skipped_and_counted():
    good = problems(4)
    broken = dataclasses.replace(good[0], problem_id="broken-1", image=b"\x89PNG\r\n garbage")
    summary = run_search([broken, *good[1:]], LocalDispatcher(SimulatedActorEngine(SIM)), CFG,
                         lambda p, t: None, progress=False)
    assert summary.trees == 3
    assert [pid for pid, _ in summary.skipped] == ["broken-1"]
    assert "broken image" in summary.skipped[0][1]


def test_engine_errors_become_failed_generations_not_crashes():
    class Broken:
        name = "broken"

        def generate(self, requests):
            return [GenerationResult(tuple(Completion("", "error", 0, error="boom") for _ in range(r.n)), 0)
                    for r in requests]

    trees = []
    summary = run_search(problems(3), LocalDispatcher(Broken()), CFG, lambda p, t: trees.append(t),
                         progress=False)
    assert summary.trees == 3
    assert all(t.counts["failed_generations"] == CFG.expansion_width for t in trees)


def test_failing_batches_are_retried_then_counted():
    class Flaky(LocalDispatcher):
        calls = 0

        def wait(self):
            done = super().wait()
            Flaky.calls += 1
            return [(t, RuntimeError("worker died")) for t, _ in done] if Flaky.calls % 2 else done

    trees = []
    summary = run_search(problems(6), Flaky(SimulatedActorEngine(SIM)), CFG,
                         lambda p, t: trees.append(t), progress=False)
    assert summary.trees == 6 and summary.failed_batches > 0
    assert sum(t.counts["failed_generations"] for t in trees) == 0  # retries succeeded


class FailingAfter(LocalDispatcher):
    """Answers the first `good` batches, then fails every batch with `failure`."""

    def __init__(self, engine, good, failure):
        super().__init__(engine)
        self.good, self.failure, self.batches = good, failure, 0

    def wait(self):
        done = super().wait()
        self.batches += len(done)
        return [(t, r if self.batches <= self.good else self.failure) for t, r in done]


def test_the_retry_policy_tells_a_lost_worker_from_an_engine_error():
    policy = RetryPolicy(lost_worker_attempts=2, engine_error_attempts=3)
    lost = Attempts()
    assert policy.again(WorkerLost("died"), lost) and lost.counted == 1
    for _ in range(5):  # a restarting worker costs no attempt
        assert policy.again(WorkerLost("restarting", restarting=True), lost)
    assert lost.counted == 1
    with pytest.raises(CapacityLost, match="lost its worker 2 times"):
        policy.again(WorkerLost("died"), lost)
    bad_input = Attempts()
    assert [policy.again(ValueError("bad input"), bad_input) for _ in range(3)] == [True, True, False]


def test_a_worker_restarting_for_longer_than_the_deadline_is_lost_capacity(monkeypatch):
    """A worker that never comes back from restarting (its node gone, its placement lost) stops the
    run after restart_wait_s instead of keeping the batch waiting for ever."""
    from mmc_ray.workers import dispatch

    clock = [1000.0]
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: clock[0])
    policy = RetryPolicy(restart_wait_s=60)
    attempts = Attempts()
    restarting = WorkerLost("actor unavailable", restarting=True)
    assert policy.again(restarting, attempts)
    clock[0] += 59
    assert policy.again(restarting, attempts) and attempts.counted == 0
    clock[0] += 2
    with pytest.raises(CapacityLost, match="waited 61 s for its worker to restart"):
        policy.again(restarting, attempts)


def test_lost_capacity_stops_the_search_and_poisons_no_tree(tmp_path):
    """Workers that keep dying are no verdict on the problems: the search raises, the trees finished
    before are kept, none is written with generations that never ran, and a rerun completes them."""
    probs = problems(12)
    small = dataclasses.replace(CFG, max_active_trees=2, requests_per_call=8, shard_size=1)
    with pytest.raises(CapacityLost):
        search_to_dir(probs, FailingAfter(SimulatedActorEngine(SIM), 30, WorkerLost("actor died")), small,
                      tmp_path, progress=False)
    kept = rows_by_id(tmp_path)
    assert 0 < len(kept) < 12
    assert all(r["failed_generations"] == 0 for r in kept.values())
    summary = search_to_dir(probs, LocalDispatcher(SimulatedActorEngine(SIM)), small, tmp_path, progress=False)
    assert summary.resumed == len(kept) and len(rows_by_id(tmp_path)) == 12


def test_an_engine_error_that_persists_becomes_failed_generations():
    trees = []
    summary = run_search(problems(3), FailingAfter(SimulatedActorEngine(SIM), 0, RuntimeError("engine raised")),
                         CFG, lambda p, t: trees.append(t), progress=False)
    assert summary.trees == 3 and summary.failed_batches >= 3
    assert all(t.counts["failed_generations"] > 0 for t in trees)


def test_duplicate_problem_ids_are_rejected():
    p = problems(1)[0]
    with pytest.raises(ValueError, match="appears twice"):
        run_search([p, p], LocalDispatcher(SimulatedActorEngine(SIM)), CFG, lambda *a: None, progress=False)


def rows_by_id(out_dir):
    rows = [r for path in shard_paths(out_dir, "trees") for r in pq.read_table(path).to_pylist()]
    ids = [r["problem_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a problem was written twice"
    return {r["problem_id"]: r for r in rows}


def test_interrupted_run_resumes_to_the_same_rows(tmp_path):
    probs = problems(24)
    straight = rows_by_id_after(search_to_dir(probs, LocalDispatcher(SimulatedActorEngine(SIM)), CFG,
                                              tmp_path / "straight", progress=False), tmp_path / "straight")
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        search_to_dir(probs, CountingDispatcher(SimulatedActorEngine(SIM), fail_after=8), CFG, out,
                      progress=False)
    partial = rows_by_id(out)
    assert 0 < len(partial) < 24  # some trees were kept, none half-written
    assert not list(out.glob(".*.tmp"))
    summary = search_to_dir(probs, LocalDispatcher(SimulatedActorEngine(SIM)), CFG, out, progress=False)
    assert summary.resumed == len(partial) and summary.trees == 24 - len(partial)
    resumed = rows_by_id(out)
    assert resumed.keys() == straight.keys()
    assert resumed == straight  # deterministic search: identical rows, not just the same ids
    again = search_to_dir(probs, LocalDispatcher(SimulatedActorEngine(SIM)), CFG, out, progress=False)
    assert again.trees == 0 and again.resumed == 24


def test_a_stopped_search_keeps_its_finished_trees_and_resumes(tmp_path):
    """`stop` is how a streamed round ends its search when the trainer fails: the search stops at
    its next batch, keeps every tree it finished, and a rerun searches only the rest."""
    stop = threading.Event()

    class StopAfterFirstShard(LocalDispatcher):
        def wait(self):
            if shard_paths(tmp_path, "trees"):
                stop.set()
            return super().wait()

    probs = problems(24)
    with pytest.raises(SearchStopped, match="trees open"):
        search_to_dir(probs, StopAfterFirstShard(SimulatedActorEngine(SIM)), CFG, tmp_path, progress=False,
                      stop=stop)
    kept = rows_by_id(tmp_path)
    assert CFG.shard_size <= len(kept) < 24
    summary = search_to_dir(probs, LocalDispatcher(SimulatedActorEngine(SIM)), CFG, tmp_path, progress=False)
    assert summary.resumed == len(kept) and summary.trees == 24 - len(kept)


def rows_by_id_after(summary, out_dir):
    assert summary.trees == 24
    return rows_by_id(out_dir)


def test_tree_rows_round_trip_and_carry_the_problem(tmp_path):
    probs = problems(4)
    search_to_dir(probs, LocalDispatcher(SimulatedActorEngine(SIM)), CFG, tmp_path, progress=False)
    rows = rows_by_id(tmp_path)
    from PIL import Image

    for p in probs:
        row = rows[p.problem_id]
        assert row["image"] == p.image and row["answer"] == p.answer
        Image.open(io.BytesIO(row["image"])).verify()
        nodes = nodes_from_rows(row["nodes"])
        assert nodes[0].visits == row["nodes"][0]["visits"] > 0
        assert row["num_nodes"] == len(nodes)
        terminals = [n for n in nodes if n.terminal and not n.invalid]
        assert row["terminal_correct"] == sum(bool(n.correct) for n in terminals)
