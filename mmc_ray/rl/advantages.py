"""Advantages of sampled critiques within their prompt's group, and per-token KL estimators.

Advantages (`group_advantages`): each prompt's G critiques form a group, and a critique's advantage is
its reward against the others':
- `rloo`, leave-one-out (Critique-RL): r_i minus the mean of the other G-1 rewards;
- `grpo`, group-normalised (CTRL): (r_i - mean) / (std + eps), the population std.
A group whose rewards all tie says nothing about which critique was better: it is dropped (no
gradient from it) and counted, never silently averaged in.

KL estimators against the frozen reference, per token, from `log_ratio = log p_ref - log p` (Schulman,
"Approximating KL divergence"): `k1` = -log_ratio (unbiased, can be negative), `k3` = exp(log_ratio) -
log_ratio - 1 (unbiased, never negative, lower variance). They take floats or tensors alike (whatever
has `.exp()`), so the training loss uses the same functions the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

AdvantageKind = Literal["rloo", "grpo"]
EPS = 1e-6


@dataclass(frozen=True)
class GroupAdvantages:
    """One entry per group, in order: its critiques' advantages, or None for a dropped group."""

    values: tuple[tuple[float, ...] | None, ...]

    @property
    def dropped(self) -> int:
        return sum(v is None for v in self.values)

    @property
    def kept(self) -> int:
        return len(self.values) - self.dropped


def rloo(rewards: Sequence[float]) -> tuple[float, ...]:
    n = len(rewards)
    if n < 2:
        raise ValueError("leave-one-out needs at least 2 samples per group")
    total = sum(rewards)
    return tuple(r - (total - r) / (n - 1) for r in rewards)


def grpo(rewards: Sequence[float], eps: float = EPS) -> tuple[float, ...]:
    n = len(rewards)
    if n < 2:
        raise ValueError("a group-normalised advantage needs at least 2 samples per group")
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    return tuple((r - mean) / (std + eps) for r in rewards)


def group_advantages(groups: Sequence[Sequence[float]], kind: AdvantageKind = "rloo") -> GroupAdvantages:
    """Each group's advantages by `kind`; groups whose rewards all tie are dropped."""
    if kind not in ("rloo", "grpo"):
        raise ValueError(f"advantage {kind!r}: one of rloo, grpo")
    estimate = rloo if kind == "rloo" else grpo
    return GroupAdvantages(tuple(None if max(g) == min(g) else estimate(g) for g in groups))


def _exp(x: Any) -> Any:
    return x.exp() if hasattr(x, "exp") else math.exp(x)


def kl_k1(log_ratio: Any) -> Any:
    """-log_ratio: log p - log p_ref of the sampled token."""
    return -log_ratio


def kl_k3(log_ratio: Any) -> Any:
    """exp(log_ratio) - log_ratio - 1, >= 0."""
    return _exp(log_ratio) - log_ratio - 1
