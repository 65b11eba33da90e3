"""Models that ship inside the repository (a Hugging Face folder each, with a model card)."""

from __future__ import annotations

from pathlib import Path

# The tiny Qwen2-VL that reads its synthetic images, built by `mmc-ray model pretrain-tiny` (its card,
# README.md inside, has the recipe command, seeds, perception figures and every file's sha256).
SEEING_BASE = Path(__file__).resolve().parents[2] / "models" / "tiny-seeing"
