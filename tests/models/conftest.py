import pytest

from mmc_ray.config import TinyModelConfig


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    from mmc_ray.models.tiny import build_tiny_vlm

    return build_tiny_vlm(TinyModelConfig(), tmp_path_factory.mktemp("models") / "tiny-vlm")


@pytest.fixture(scope="session")
def hf_engine(tiny_vlm_path):
    from mmc_ray.engines.hf import HFEngine

    return HFEngine.from_path(tiny_vlm_path, device="cpu", dtype="float32", max_batch_size=4,
                              min_pixels=56 * 56, max_pixels=112 * 112)
