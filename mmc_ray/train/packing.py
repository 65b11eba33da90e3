"""Packing plans and token-budget batches (pure: lengths in, index groups out).

Packing puts several samples in one sequence (each attends only to itself: see `collate.py`), so
compute is not spent on padding. Without packing, samples of similar length are batched together
under a token budget that counts every padded position, so one long sample (a large image) makes a
small batch instead of an out-of-memory one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

Item = TypeVar("Item")


def plan_packs(lengths: Sequence[int], max_tokens: int,
               rng: random.Random | None = None) -> list[list[int]]:
    """Group sample indices into packs of at most `max_tokens` tokens: first fit, in an order
    shuffled by `rng` (in index order without one), packs in the order they were opened.
    A sample longer than `max_tokens` is an error: examples are filtered by length before this.

    Not first-fit decreasing: that fills packs a little better, but it puts samples of like length
    together, and a critique's length follows its verdict (a wrong path's critique names a step,
    an error type and a correction). Every optimizer step then held only incorrect or only correct
    examples, and the critic learned a constant verdict instead of judging (issue #20)."""
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        raise ValueError(f"samples {too_long[:5]} are longer than the pack size {max_tokens}")
    order = list(range(len(lengths)))
    if rng is not None:
        rng.shuffle(order)
    packs: list[list[int]] = []
    room: list[int] = []
    for i in order:
        slot = next((p for p, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            packs.append([i])
            room.append(max_tokens - lengths[i])
        else:
            packs[slot].append(i)
            room[slot] -= lengths[i]
    return packs


def token_budget_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Length-bucketed padded batches whose padded size (batch size x longest sample) stays within
    `max_tokens`; a sample longer than the budget gets a batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pooled_groups(chunks: Iterable[Sequence[Item]], length: Callable[[Item], int],
                  plan: Callable[[list[int]], list[list[int]]], pool_tokens: int) -> Iterator[list[Item]]:
    """Groups of the items of `chunks` (each item once, all of them), planned by `plan` (lengths in,
    index groups out) over a pool of at least `pool_tokens` tokens rather than chunk by chunk.

    Once the pool holds `pool_tokens`, every group but the least full one is given out; that one
    stays in the pool for the next chunk to fill. So chunks of a few items (rows as a streamed
    upstream writes them) still make full groups. What is left at the end is planned as it is."""
    pool: list[Item] = []
    lengths: list[int] = []  # of the pool's items
    for chunk in chunks:
        pool.extend(chunk)
        lengths.extend(length(item) for item in chunk)
        if not pool or sum(lengths) < pool_tokens:
            continue
        groups = plan(lengths)
        kept = min(groups, key=lambda group: sum(lengths[i] for i in group))
        for group in groups:
            if group is not kept:
                yield [pool[i] for i in group]
        pool, lengths = [pool[i] for i in kept], [lengths[i] for i in kept]
    if pool:
        for group in plan(lengths):
            yield [pool[i] for i in group]
