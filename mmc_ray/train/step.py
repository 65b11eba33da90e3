"""One training step recipe for every loop that trains: the Ray Train workers (a DeepSpeed engine)
and the in-process fits of probes, tests and the seeing-base recipe (`LocalEngine`, the same
interface without DeepSpeed).

A step is `grad_accum` micro-batches, each forward and backward with the loss scaled by
1/`grad_accum`; at the step's end the gradient norm of what trains is clipped to `grad_clip`, AdamW
steps and the warmup + cosine schedule advances. Micro-batches come packed under the token budget
in a shuffled first-fit order (`packed_batches`), or length-bucketed and padded with `pack` off.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mmc_ray.config import TrainConfig
from mmc_ray.train.attention_guide import AttentionGuide, GuideSettings, guiding

POOL_STEPS = 4  # examples are grouped into steps over a pool of about this many steps' tokens
Batch = tuple[dict[str, Any], int, int]  # model inputs, real tokens, samples


def freeze_parts(model: Any, parts: tuple[str, ...]) -> tuple[int, int]:
    """Freeze the named parts of a Qwen2-VL model; returns (trainable, total) parameter counts."""
    for name, param in model.named_parameters():
        is_projector = ".visual.merger." in f".{name}"
        is_vision = ".visual." in f".{name}" and not is_projector
        part = "projector" if is_projector else "vision" if is_vision else "language"
        param.requires_grad = part not in parts
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def optimizer_and_schedule(model: Any, cfg: TrainConfig) -> tuple[Any, Any]:
    """AdamW over the parameters left trainable, with warmup and cosine decay."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))


class LocalEngine:
    """What a training step uses of a DeepSpeed engine, for a model trained in this process: calling
    it runs the forward, `backward` scales the loss by 1/`grad_accum`, and `step` clips, steps the
    optimizer and the schedule at the end of every `grad_accum` micro-batches."""

    def __init__(self, model: Any, optimizer: Any, schedule: Any, grad_accum: int, grad_clip: float) -> None:
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self._micro = 0

    @classmethod
    def for_model(cls, model: Any, cfg: TrainConfig, extra: Any = None) -> LocalEngine:
        """AdamW and the schedule over `model`'s trainable parameters (and `extra`'s, a head trained
        beside it)."""
        import torch

        params = model if extra is None else torch.nn.ModuleList([model, extra])
        return cls(model, *optimizer_and_schedule(params, cfg), cfg.grad_accum, cfg.grad_clip)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def __call__(self, **batch: Any) -> Any:
        return self.model(**batch)

    def backward(self, loss: Any) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> None:
        import torch

        self._micro += 1
        if self._micro % self.grad_accum:
            return
        trained = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(trained, self.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad()


@dataclass(frozen=True)
class StepDone:
    loss: Any  # the mean loss of the step's micro-batches, a tensor on the engine's device
    tokens: int
    samples: int
    data_wait_s: float  # spent waiting for the micro-batches


def train_step(engine: Any, batches: Iterator[Batch], grad_accum: int,
               on_batch: Callable[[dict[str, Any], int], None] | None = None,
               guide: GuideSettings | None = None) -> StepDone:
    """One optimizer step of `engine` (DeepSpeed's or a `LocalEngine`) over the next `grad_accum`
    micro-batches of `batches`; `on_batch` sees each before it is trained on. With `guide`, batches'
    `attention_targets` add the attention-guidance loss (`train/attention_guide.py`)."""
    import torch

    losses, tokens, samples, waited = [], 0, 0, 0.0
    for _ in range(grad_accum):
        fetched = time.perf_counter()
        batch, n_tokens, n_samples = next(batches)
        waited += time.perf_counter() - fetched
        if on_batch is not None:
            on_batch(batch, n_tokens)
        targets = batch.pop("attention_targets", ())
        batch = {k: v.to(engine.device) if hasattr(v, "to") else v for k, v in batch.items()}
        attention = AttentionGuide(guide.layer, guide.head, targets) if guide and targets else None
        with guiding(attention):
            loss = engine(**batch).loss
        if attention is not None:
            loss = loss + guide.weight * attention.loss()
        engine.backward(loss)
        engine.step()
        tokens += n_tokens
        samples += n_samples
        losses.append(loss.detach().float())
    return StepDone(torch.stack(losses).mean(), tokens, samples, waited)


def packed_batches(groups: Iterable[Sequence[Any]], cfg: TrainConfig, model: Any, image_token_id: int,
                   pad_token_id: int, rng: random.Random) -> Iterator[Batch]:
    """Micro-batches from groups of examples (as they arrive: a shard's tables, or one list), pooled
    across groups so the few rows at a time of a streamed upstream still make full steps: packed in
    a first-fit order shuffled by `rng`, or length-bucketed and padded when `cfg.pack` is off."""
    from mmc_ray.train.collate import collate_packed, collate_padded
    from mmc_ray.train.packing import plan_packs, pooled_groups, token_budget_batches

    def plan(lengths: list[int]) -> list[list[int]]:
        if cfg.pack:
            return plan_packs(lengths, cfg.tokens_per_step, rng)
        return token_budget_batches(lengths, cfg.tokens_per_step)

    for chosen in pooled_groups(groups, len, plan, POOL_STEPS * cfg.tokens_per_step):
        batch = (collate_packed(chosen, model, image_token_id) if cfg.pack
                 else collate_padded(chosen, pad_token_id, image_token_id))
        yield batch, sum(len(ex) for ex in chosen), len(chosen)
