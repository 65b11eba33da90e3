import os

import pytest

# Tests never reach a hub, never log to wandb online, and run Ray without token auth.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    """The tiny random-weight Qwen2-VL, built once per test session."""
    from mmc_ray.config import TinyModelConfig
    from mmc_ray.models.tiny import build_tiny_vlm

    return build_tiny_vlm(TinyModelConfig(), tmp_path_factory.mktemp("models") / "tiny-vlm")
