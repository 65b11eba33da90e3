"""Killing a policy worker mid-search and waiting for Ray to bring it back: shared by the search
tests on the HF engine (tests/ray/test_search_on_ray.py) and on vLLM (tests/vllm_tier)."""

import time

from mmc_ray.workers.dispatch import RayDispatcher


def search_killing_a_worker(ray, group, problems, search, out, restart_timeout_s: float,
                            call_timeout_s: float = 10, inflight_per_worker: int = 2):
    """Search `problems` on `group`'s workers, killing the first one mid-search; returns the search
    summary and the victim's pid before and after its restart."""
    from mmc_ray.stages.search import search_to_dir

    victim = group.workers[0]
    pid_before = group.health()[0]["pid"]
    summary = search_to_dir(problems, killing_dispatcher(ray, group.workers, victim, inflight_per_worker=inflight_per_worker),
                            search, out,
                            progress=False)
    return summary, pid_before, restarted_pid(ray, victim, restart_timeout_s, call_timeout_s)


def killing_dispatcher(ray, workers, victim, at_submit: int = 3, inflight_per_worker: int = 2) -> RayDispatcher:
    """A dispatcher that kills `victim` (restartable) right after its `at_submit`-th batch goes out,
    so the worker holds work when it dies."""

    class KillingDispatcher(RayDispatcher):
        submitted = 0

        def submit(self, batch):
            ticket = super().submit(batch)
            KillingDispatcher.submitted += 1
            if KillingDispatcher.submitted == at_submit:
                ray.kill(victim, no_restart=False)
            return ticket

    return KillingDispatcher(workers, inflight_per_worker)


def restarted_pid(ray, worker, timeout_s: float, call_timeout_s: float = 10) -> int:
    """The pid of `worker` once its restarted actor answers again."""
    deadline = time.time() + timeout_s
    while True:
        try:
            return ray.get(worker.health.remote(), timeout=call_timeout_s)["pid"]
        except ray.exceptions.RayError:
            assert time.time() < deadline, "killed worker never came back"
