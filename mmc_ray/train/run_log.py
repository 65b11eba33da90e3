"""Rank 0's per-step training log: live gauges in the Ray dashboard and a wandb run.

wandb never needs a network by default: `WANDB_MODE` wins when set; otherwise the run is online
only when `WANDB_API_KEY` is set, and offline (`wandb sync <dir>` uploads it later) when not.

Estimated MFU = model FLOP/s ÷ `train.peak_tflops` (per worker), with model FLOPs per token
= 2·N (forward) + 4·N_trainable (backward), N the parameter count; attention FLOPs are left out,
so this slightly under-counts long sequences.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmc_ray.metrics import StageMetrics


def wandb_mode(env: Mapping[str, str]) -> str:
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    return "online" if env.get("WANDB_API_KEY") else "offline"


def model_flops_per_token(total_params: int, trainable_params: int) -> int:
    return 2 * total_params + 4 * trainable_params


class StepLog:
    """What rank 0 logs every optimizer step; other ranks pass `enabled=False`."""

    def __init__(self, enabled: bool, wandb_project: str, wandb_dir: str | None,
                 run_config: dict[str, Any]) -> None:
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
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
