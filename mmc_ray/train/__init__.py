"""Critic (and actor SFT) training: examples, packing, collation; the Ray Train + DeepSpeed trainer."""
