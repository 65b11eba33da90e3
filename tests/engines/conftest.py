import pytest


@pytest.fixture(scope="session", params=["hf", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.slow])])
def engine(request, tiny_vlm_path):
    """Every local engine on the same tiny VLM, pixel budget and dtype (float32)."""
    if request.param == "vllm":
        return request.getfixturevalue("vllm_engine")
    from mmc_ray.engines.hf import HFEngine

    return HFEngine.from_path(tiny_vlm_path, device="cpu", dtype="float32", max_batch_size=4,
                              min_pixels=56 * 56, max_pixels=112 * 112)


@pytest.fixture(scope="session")
def tokenizer(tiny_vlm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_vlm_path, local_files_only=True)
