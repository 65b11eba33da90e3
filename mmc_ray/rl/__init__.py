"""Reinforcement learning for the critic, pure parts: rewards for critiques (`rewards`), advantages
within a prompt's group and KL estimators (`advantages`). No Ray, no torch: the rollout, update and
weight-sync loop lives in `train/`."""
