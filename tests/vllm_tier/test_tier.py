"""The vLLM tier's venv itself: what `make setup-vllm` works around must stay worked around."""

import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vllm


def test_torchvision_imports_through_the_shim_and_its_transforms_work():
    """PyPI's torchvision is a CUDA build; vllm-cpu/torchvision_shim.py defines its operator schemas
    so it imports. If a CPU torchvision lands here the shim must step aside (then drop it)."""
    code = ("import torch, torchvision, mmc_torchvision_shim as shim\n"
            "from torchvision.transforms import functional as F\n"
            "assert F.resize(torch.ones(3, 8, 8), [4, 4]).shape == (3, 4, 4)\n"
            "print(shim._library is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True", "torchvision's own ops load: the shim is no longer needed"


def test_qwen2_vl_imports_in_transformers_and_vllm():
    from transformers import Qwen2VLForConditionalGeneration  # noqa: F401
    from vllm.model_executor.models import qwen2_vl  # noqa: F401


def test_torchaudio_is_removed():
    # its library does not load next to the CPU torch, and transformers' audio utils import it
    assert importlib.util.find_spec("torchaudio") is None
