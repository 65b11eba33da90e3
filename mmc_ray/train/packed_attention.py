"""Attention for packed sequences without a dense mask.

A packed batch carries its sample boundaries as `cu_seq_lens_q/k` (the keyword arguments
transformers' flash-attention varlen path reads). On GPU, `flash_attention_2` uses them directly;
on CPU (or without flash-attn) this registered implementation runs causal SDPA segment by segment,
so attention costs the sum of the samples' squares instead of the square of the pack.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from mmc_ray.train.attention_guide import active_guide

PACKED_SDPA = "mmc_packed_sdpa"


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                        scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    bounds = kwargs.get("cu_seq_lens_q")
    if (guide := active_guide()) is not None:
        guide.observe(module, query, key, scaling, bounds)
    if bounds is None:  # an ordinary (padded) batch
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    edges = bounds.tolist()
    out = torch.cat([
        F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                       dropout_p=dropout, scale=scaling, is_causal=True)
        for s, e in pairwise(edges)
    ], dim=2)
    return out.transpose(1, 2).contiguous(), None


def use_packed_attention(model: Any) -> None:
    """Switch the language model of `model` to packed-aware attention (CPU or no flash-attn)."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    model.config.text_config._attn_implementation = PACKED_SDPA
