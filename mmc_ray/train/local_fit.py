"""The trainer's recipe in this process, without Ray or DeepSpeed: for probes and learnability tests
that need thousands of small steps and a look at the model between them. Packed samples in a
shuffled first-fit order, `TrainConfig`'s frozen parts, AdamW with warmup and cosine decay, gradient
clipping: what a Ray Train fit does per step, so what it learns here a fit learns too."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mmc_ray.config import TrainConfig
from mmc_ray.train.collate import collate_packed
from mmc_ray.train.examples import TrainExample
from mmc_ray.train.packed_attention import use_packed_attention
from mmc_ray.train.packing import plan_packs
from mmc_ray.train.trainer import freeze_parts, optimizer_and_schedule


@dataclass(frozen=True)
class LocalFit:
    losses: list[float]  # one per optimizer step
    trainable_params: int
    total_params: int


def fit_in_process(vlm: Any, examples: Sequence[TrainExample], cfg: TrainConfig, rng: random.Random,
                   on_step: Callable[[list[float]], None] | None = None) -> LocalFit:
    """Train `vlm.model` on `examples` for `cfg.max_steps` steps, going over them again as often as
    needed; `on_step(losses)` runs after each step with the losses so far (the model is in train mode
    again after it)."""
    model = vlm.model.train()
    use_packed_attention(model)
    trainable, total = freeze_parts(model, cfg.freeze)
    optimizer, schedule = optimizer_and_schedule(model, cfg)
    losses: list[float] = []
    while len(losses) < cfg.max_steps:
        for pack in plan_packs([len(ex) for ex in examples], cfg.tokens_per_step, rng):
            loss = model(**collate_packed([examples[i] for i in pack], model, vlm.image_token_id)).loss
            losses.append(optimizer_step(loss, optimizer, schedule, cfg.grad_clip))
            if on_step is not None:
                on_step(losses)
                model.train()
            if len(losses) == cfg.max_steps:
                break
    return LocalFit(losses, trainable, total)


def optimizer_step(loss: Any, optimizer: Any, schedule: Any, grad_clip: float) -> float:
    """Backward, clip the gradient norm of what `optimizer` trains, step and schedule; the loss."""
    import torch

    loss.backward()
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(trained, grad_clip)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()
    return loss.item()
