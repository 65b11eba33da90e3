import pytest


@pytest.fixture(scope="session")
def hf_engine(tiny_vlm_path):
    from mmc_ray.engines.hf import HFEngine

    return HFEngine.from_path(tiny_vlm_path, device="cpu", dtype="float32", max_batch_size=4,
                              min_pixels=56 * 56, max_pixels=112 * 112)
