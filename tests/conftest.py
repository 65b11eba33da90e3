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


# The vLLM tier (make test-vllm) sets MMC_VLLM_TIER=1: there a missing vLLM, or any skipped test, fails
# the run, so the tier can never pass by skipping. Elsewhere vllm-marked tests skip, saying why.
VLLM_TIER = os.environ.get("MMC_VLLM_TIER") == "1"


def _vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def pytest_collection_modifyitems(config, items):
    if _vllm_importable():
        return
    if VLLM_TIER:
        raise pytest.UsageError("MMC_VLLM_TIER=1 but vLLM is not importable: run `make setup-vllm`")
    skip = pytest.mark.skip(reason="needs vLLM: `make test-vllm` runs it on vLLM's CPU build")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if VLLM_TIER and skipped and session.exitstatus == 0:
        reporter.write_line(f"vLLM tier: {skipped} test(s) skipped; every vLLM test must run here", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def vllm_engine(tiny_vlm_path):
    """One vLLM engine on the tiny VLM for the whole session (each start costs 15-35 s on CPU), in
    float32 to compare with `HFEngine`; on vLLM's CPU build when no CUDA device is visible."""
    import torch

    from mmc_ray.config import EngineConfig, VLLMConfig
    from mmc_ray.engines.vllm import VLLMEngine

    cfg = EngineConfig(kind="vllm", model_path=str(tiny_vlm_path), dtype="float32",
                       device="cuda" if torch.cuda.is_available() else "cpu", min_pixels=56 * 56, max_pixels=112 * 112,
                       vllm=VLLMConfig(gpu_memory_utilization=0.3, cpu_kv_cache_gib=1, max_model_len=2048,
                                       max_images_per_prompt=2))
    engine = VLLMEngine.from_config(cfg, enforce_eager=True)  # no CUDA-graph capture: faster start
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by the Ray tests."""
    import ray

    from mmc_ray.ray_runtime import SERVE_PROXY_CALLBACK, local_ray_options

    os.environ.setdefault(*SERVE_PROXY_CALLBACK)  # as init_ray does for a Ray it starts
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, **local_ray_options(),
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_starts(monkeypatch):
    """Records every call of `init_ray` (the one way our code starts or joins Ray) instead of making
    it: a test asserts a command stopped before it. (The session's own Ray may already be up.)"""
    from mmc_ray import ray_runtime

    calls: list[int] = []
    monkeypatch.setattr(ray_runtime, "init_ray", lambda: calls.append(1))
    return calls
