"""Model inputs from `TrainExample`s, packed or padded.

Packed: the samples are concatenated into one sequence with their boundaries as `cu_seq_lens_q/k`
(flash-attention's varlen arguments; `packed_attention.py` serves them on CPU), so each sample
attends only to itself, and each sample gets its own multimodal rotary positions (Qwen2-VL's 3-D
mrope ids from the model's `get_rope_index`): every sample's loss is what it would be alone.
Padded: samples are right-padded to the longest in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mmc_ray.train.examples import IGNORE_INDEX, TrainExample


def _vision(examples: Sequence[TrainExample]) -> dict[str, torch.Tensor]:
    with_images = [ex for ex in examples if ex.pixel_values is not None]
    if not with_images:
        return {}
    return {
        "pixel_values": torch.from_numpy(np.concatenate([ex.pixel_values for ex in with_images])),
        "image_grid_thw": torch.tensor([g for ex in with_images for g in ex.image_grid_thw]),
    }


def sample_position_ids(model: Any, example: TrainExample, image_token_id: int) -> torch.Tensor:
    """The (3, 1, len) mrope position ids of one sample on its own."""
    ids = torch.tensor([example.input_ids])
    grid = torch.tensor(example.image_grid_thw) if example.image_grid_thw else None
    positions, _ = model.model.get_rope_index(
        input_ids=ids, mm_token_type_ids=(ids == image_token_id).int(), image_grid_thw=grid,
        attention_mask=torch.ones_like(ids),
    )
    return positions


def collate_packed(examples: Sequence[TrainExample], model: Any, image_token_id: int) -> dict[str, Any]:
    """One packed sequence of all `examples` (batch size 1)."""
    lengths = [len(ex) for ex in examples]
    ids = torch.tensor([[t for ex in examples for t in ex.input_ids]])
    labels = torch.tensor([[t for ex in examples for t in ex.labels]])
    bounds = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32)
    labels[0, bounds[:-1].long()] = IGNORE_INDEX  # never predict a sample's first token from the last
    guided = {}
    if any(ex.attention_targets for ex in examples):
        guided["attention_targets"] = [(start + q, tuple(start + t for t in looked_at))
                                       for ex, start in zip(examples, bounds.tolist(), strict=False)
                                       for q, looked_at in ex.attention_targets]
    return {
        **guided,
        "input_ids": ids,
        "labels": labels,
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
        "max_length_q": max(lengths),
        "max_length_k": max(lengths),
        "position_ids": torch.cat([sample_position_ids(model, ex, image_token_id) for ex in examples], dim=2),
        "mm_token_type_ids": (ids == image_token_id).int(),
        **_vision(examples),
    }


def collate_padded(examples: Sequence[TrainExample], pad_token_id: int,
                   image_token_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch; the model derives positions from the 2-D attention mask."""
    longest = max(len(ex) for ex in examples)
    ids = torch.full((len(examples), longest), pad_token_id)
    labels = torch.full((len(examples), longest), IGNORE_INDEX)
    attention = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, ex in enumerate(examples):
        ids[row, : len(ex)] = torch.tensor(ex.input_ids)
        labels[row, : len(ex)] = torch.tensor(ex.labels)
        attention[row, : len(ex)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention,
            "mm_token_type_ids": (ids == image_token_id).int(), **_vision(examples)}
