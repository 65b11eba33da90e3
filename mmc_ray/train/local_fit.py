"""The trainer's step recipe (`train/step.py`) in this process, without Ray or DeepSpeed: for probes,
learnability tests and the seeing-base recipe, which need thousands of small steps and a look at the
model between them. The same packing, frozen parts, AdamW schedule, accumulation and clipping as a
Ray Train fit, so what it learns here a fit learns too."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mmc_ray.config import TrainConfig
from mmc_ray.train.attention_guide import GuideSettings
from mmc_ray.train.examples import TrainExample
from mmc_ray.train.packed_attention import use_packed_attention
from mmc_ray.train.step import LocalEngine, freeze_parts, packed_batches, train_step


@dataclass(frozen=True)
class LocalFit:
    losses: list[float]  # one per optimizer step
    trainable_params: int
    total_params: int


def fit_in_process(vlm: Any, examples: Sequence[TrainExample], cfg: TrainConfig, rng: random.Random,
                   after_step: Callable[[list[float]], None] | None = None,
                   guide: GuideSettings | None = None) -> LocalFit:
    """Train `vlm.model` on `examples` for `cfg.max_steps` steps, going over them again as often as
    needed; `after_step(losses)` runs after each step with the losses so far (the model is in train
    mode again after it). `guide`: attention guidance on the examples' `attention_targets`."""
    model = vlm.model.train()
    if cfg.pack:
        use_packed_attention(model)
    trainable, total = freeze_parts(model, cfg.freeze)
    engine = LocalEngine.for_model(model, cfg)
    pad = vlm.tokenizer.pad_token_id

    def epochs():
        while True:
            yield from packed_batches([examples], cfg, model, vlm.image_token_id, pad, rng)

    batches = epochs()
    losses: list[float] = []
    while len(losses) < cfg.max_steps:
        losses.append(train_step(engine, batches, cfg.grad_accum, guide=guide).loss.item())
        if after_step is not None:
            after_step(losses)
            model.train()
    return LocalFit(losses, trainable, total)
