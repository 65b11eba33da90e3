"""The GPU benchmarks' CPU paths (issue #10): `--dry-run` builds and prints the plan with neither vLLM
nor a GPU, and a real run on a machine without them exits 2 saying why, so bench/gpu_run.sh can tell
a skipped step from a failed one. Each script runs as a subprocess, as the device script runs it."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # model builds and a small synthetic dataset: ~10-20 s per dry run

ROOT = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_vllm_dry_run_plans_prompts_and_search():
    run = bench("gpu_vllm.py", "--dry-run", "--quick")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "model: tiny random-weight Qwen2-VL: 0.25M parameters" in run.stdout
    assert "(a) engine overhead: 128 prompts (128 with an image)" in run.stdout
    assert "'n': 4" in run.stdout and "'max_tokens': 128" in run.stdout  # the SamplingParams both sides get
    assert "(b) MCTS tree overhead: 64 problems" in run.stdout
    assert "dry run: no vLLM, no GPU used" in run.stdout


def test_train_mfu_dry_run_counts_the_2b_model_and_checks_the_trainer():
    run = bench("gpu_train_mfu.py", "--dry-run", "--quick")
    assert run.returncode == 0, run.stderr[-3000:]
    # Qwen2-VL-2B-Instruct's own count: the architecture is the real one, weights random.
    assert "2.21B parameters (2,208,985,600: language 1.54B" in run.stdout
    assert "trainer hooks: ok" in run.stdout
    assert "dataset: 300 problems on the GPU run" in run.stdout
    assert "24 steps" in run.stdout and "ZeRO-2 bf16" in run.stdout
    assert "the trainer's MFU reads" in run.stdout


@pytest.mark.parametrize("script", ["gpu_vllm.py", "gpu_train_mfu.py"])
def test_without_a_gpu_a_real_run_exits_2_with_the_reason(script):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the real run would start")
    run = bench(script, "--quick")
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "--dry-run" in run.stderr
    assert "CUDA" in run.stderr or "vLLM is not installed" in run.stderr
