"""Rank 0's per-step training log: live gauges in the Ray dashboard, a wandb run, and the driver's
progress bar (rank 0 posts each step to a small `StepBoard` actor that the driver polls).

wandb never needs a network by default: `WANDB_MODE` wins when set; otherwise the run is online
only when `WANDB_API_KEY` is set, and offline (`wandb sync <dir>` uploads it later) when not.

Estimated MFU = model FLOP/s ÷ `train.peak_tflops` (per worker), with model FLOPs per token
= 2·N (forward) + 4·N_trainable (backward), N the parameter count; attention FLOPs are left out,
so this slightly under-counts long sequences.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mmc_ray.dashboard_metrics import StageMetrics


def wandb_mode(env: Mapping[str, str]) -> str:
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    return "online" if env.get("WANDB_API_KEY") else "offline"


def model_flops_per_token(total_params: int, trainable_params: int) -> int:
    return 2 * total_params + 4 * trainable_params


class StepBoard:
    """The latest step rank 0 reported (a Ray actor the driver reads)."""

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}

    def post(self, values: dict[str, float]) -> None:
        self.latest = values

    def read(self) -> dict[str, float]:
        return self.latest


@contextlib.contextmanager
def driver_progress(total_steps: int, enabled: bool = True, poll_s: float = 1.0,
                    on_progress: Callable[[dict[str, float]], None] | None = None) -> Iterator[Any]:
    """A `StepBoard` actor handle for the workers (None when disabled) while the driver follows it:
    each new step's values (step, loss, tokens/s, ...) go to `on_progress`, or by default to a tqdm bar."""
    if not enabled:
        yield None
        return
    import ray
    from tqdm import tqdm

    board = ray.remote(num_cpus=0)(StepBoard).remote()
    done = threading.Event()

    def follow() -> None:
        with tqdm(total=total_steps, desc="train", unit="step", disable=on_progress is not None) as bar:
            while True:
                finished = done.wait(poll_s)
                latest = ray.get(board.read.remote())
                if latest and int(latest["step"]) != bar.n:
                    bar.n = int(latest["step"])
                    if on_progress is not None:
                        on_progress(latest)
                    else:
                        bar.set_postfix(loss=f"{latest['loss']:.3f}", tok_s=f"{latest['tokens_per_s']:.0f}")
                if finished:
                    return

    follower = threading.Thread(target=follow, name="train-progress", daemon=True)
    follower.start()
    try:
        yield board
    finally:
        done.set()
        follower.join()
        ray.kill(board)


class StepLog:
    """What rank 0 logs every optimizer step; other ranks pass `enabled=False`."""

    def __init__(self, enabled: bool, wandb_project: str, wandb_dir: str | None,
                 run_config: dict[str, Any], board: Any = None) -> None:
        self.board = board if enabled else None
        self.live = StageMetrics("train", counters=("steps", "tokens"), gauges=(
            "loss", "learning_rate", "tokens_per_s", "samples_per_s", "data_wait_share", "mfu")) \
            if enabled else None
        self.wandb_run = None
        if enabled and wandb_project:
            import wandb

            Path(wandb_dir or ".").mkdir(parents=True, exist_ok=True)
            self.wandb_run = wandb.init(project=wandb_project, dir=wandb_dir, config=run_config,
                                        mode=wandb_mode(os.environ), reinit="finish_previous")

    @property
    def wandb_run_dir(self) -> str | None:
        """The run's folder (offline: what `wandb sync` takes)."""
        return None if self.wandb_run is None else str(Path(self.wandb_run.dir).parent)

    def log(self, step: int, tokens: int, values: dict[str, float]) -> None:
        if self.live is not None:
            self.live.inc("steps")
            self.live.inc("tokens", tokens)
            for name, value in values.items():  # names without a gauge are ignored
                self.live.set(name, value)
        if self.board is not None:
            self.board.post.remote({"step": step, **values})  # fire and forget
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
