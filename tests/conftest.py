import os
from pathlib import Path

import pytest

# Tests never reach a hub, never log to wandb online, and run Ray without token auth.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# DeepSpeed compiles a CPU comm op at its first init (~40 s): one cache for every test, subprocesses
# and local Ray workers included (they inherit the environment).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    """The tiny random-weight Qwen2-VL, built once per test session."""
    from mmc_ray.config import TinyModelConfig
    from mmc_ray.models.tiny import build_tiny_vlm

    return build_tiny_vlm(TinyModelConfig(), tmp_path_factory.mktemp("models") / "tiny-vlm")
