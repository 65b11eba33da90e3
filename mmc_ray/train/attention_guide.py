"""Attention guidance: a loss that teaches the language model where in the image to look.

A tiny VLM whose vision tower reads an image's values (a reader head gets 100% of the box digits from
its visual tokens) still fails to say them: its language model must learn, from the value tokens'
loss alone, to find the named box's tokens among all the others (two hops: gather the name from the
sentence, then match it against the image), and it learns that slowly (bench/RESULTS.md, issue #36).
The renderers know where every fact is drawn (`TaskInstance.regions`), so the recipe that teaches the
base to see tells one attention head of one layer, at the position that predicts a value, to put its
mass on the visual tokens that cover that fact: `-log(attention mass on those tokens)`, averaged over
the values of a step and added to the language loss with a weight. The model is unchanged (the
guided head is an ordinary head); only training differs.

`TrainExample.attention_targets` holds, per value, (the position that predicts its first token, the
positions of the visual tokens to look at); `collate_packed` shifts them into the packed sequence and
`packed_attention` hands the guided layer's queries and keys to the active `AttentionGuide`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

Box = tuple[float, float, float, float]  # left, top, right, bottom as fractions of the image side
Target = tuple[int, tuple[int, ...]]  # (query position, visual-token positions)

_ACTIVE: contextvars.ContextVar[AttentionGuide | None] = contextvars.ContextVar("attention_guide",
                                                                                default=None)


@dataclass(frozen=True)
class GuideSettings:
    """Attention guidance of a fit: the guided layer and head, and the weight of its loss."""

    layer: int
    head: int
    weight: float


def covered_tokens(boxes: Sequence[Box], grid_h: int, grid_w: int) -> list[int]:
    """Indices (row-major) of the merged visual tokens of a `grid_h` x `grid_w` grid the boxes touch."""
    cells: set[int] = set()
    for left, top, right, bottom in boxes:
        cols = range(_cell(left, grid_w), _cell(right, grid_w) + 1)
        rows = range(_cell(top, grid_h), _cell(bottom, grid_h) + 1)
        cells.update(r * grid_w + c for r in rows for c in cols)
    return sorted(cells)


def _cell(fraction: float, cells: int) -> int:
    return min(max(math.floor(fraction * cells), 0), cells - 1)


def example_targets(input_ids: Sequence[int], image_token_id: int, grid_thw: Sequence[int], merge: int,
                    values: Sequence[tuple[Sequence[int], Sequence[Box]]]) -> tuple[Target, ...]:
    """Targets of one example with one image: `values` are (the positions of a value's tokens, the
    boxes of its fact); values whose fact has no box are left unguided."""
    visual = [i for i, token in enumerate(input_ids) if token == image_token_id]
    _, h, w = grid_thw
    grid_h, grid_w = h // merge, w // merge
    if len(visual) != grid_h * grid_w:
        raise ValueError(f"{len(visual)} image tokens for a {grid_h}x{grid_w} token grid")
    return tuple((positions[0] - 1, tuple(visual[i] for i in covered_tokens(boxes, grid_h, grid_w)))
                 for positions, boxes in values if positions and boxes)


@dataclass
class AttentionGuide:
    """The targets of one packed micro-batch and the loss of the guided head on them."""

    layer: int
    head: int
    targets: Sequence[Target]
    log_mass: list[Any] = field(default_factory=list)

    def observe(self, module: Any, query: Any, key: Any, scaling: float | None, bounds: Any) -> None:
        """Called by the attention of every layer with its queries (batch, heads, seq, dim) and keys
        (batch, kv heads, seq, dim) of a packed sequence (`bounds`: sample boundaries, or None)."""
        import torch

        if getattr(module, "layer_idx", None) != self.layer or not self.targets:
            return
        kv_head = self.head // (query.shape[1] // key.shape[1])
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        positions = torch.tensor([position for position, _ in self.targets])
        edges = torch.tensor([0, query.shape[2]] if bounds is None else bounds.tolist())
        starts = edges[torch.searchsorted(edges, positions, right=True) - 1]
        # One row per value: its query against every key, masked to its own sample's causal past.
        logits = (query[0, self.head, positions] @ key[0, kv_head].T) * scale
        keys = torch.arange(key.shape[2])
        visible = (keys >= starts[:, None]) & (keys <= positions[:, None])
        wanted = torch.zeros_like(visible)
        for row, (_, looked_at) in enumerate(self.targets):
            wanted[row, list(looked_at)] = True
        logits = logits.masked_fill(~visible, float("-inf"))
        mass = torch.logsumexp(logits.masked_fill(~wanted, float("-inf")), 1) - torch.logsumexp(logits, 1)
        self.log_mass.extend(mass.unbind())

    def loss(self) -> Any:
        """Mean `-log(mass on the targets)` over the micro-batch's values (0 without any)."""
        import torch

        return -torch.stack(self.log_mass).mean() if self.log_mass else torch.zeros(())


def active_guide() -> AttentionGuide | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def guiding(guide: AttentionGuide | None) -> Iterator[AttentionGuide | None]:
    """`guide` observes the attention of the forward passes inside the block."""
    token = _ACTIVE.set(guide)
    try:
        yield guide
    finally:
        _ACTIVE.reset(token)
