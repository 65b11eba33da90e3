"""`mmc-ray pipeline` with the critic on vLLM (`critic.kind=vllm`, its CPU build): every round's
trained critic is loaded by vLLM workers and refines with them, in a subprocess as a user runs it."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_each_round_refines_with_its_trained_critic_on_vllm(tmp_path):
    run = tmp_path / "run"
    args = ("demo", "--out", str(run), "--rounds", "2", "tasks.n=8", "pipeline.eval_problems=6",
            "pipeline.oracle_baseline=false", "train.max_steps=2", "refine.max_rounds=1",
            "refine.critic_max_new_tokens=24", "critic.kind=vllm", "critic.device=cpu", "critic.dtype=float32",
            "critic.cpu_kv_cache_gib=1", "critic.max_model_len=4096", "critic.max_images_per_prompt=1")
    proc = subprocess.run([sys.executable, "-m", "mmc_ray.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for r in (1, 2):
        critic = run / f"round-{r}" / "critic" / "hf"
        for refined in ("refine", "refine-train") if r == 1 else ("refine",):
            context = json.loads((run / f"round-{r}" / refined / "report" / "report.json").read_text())["context"]
            assert context["critic"].startswith("critic[vllm]"), context
            assert context["critic model"] == str(critic)
        records = pq.read_table(run / f"round-{r}" / "refine" / "records").to_pylist()
        assert {x["problem_id"] for x in records if x["final"]} and any(x["critic_text"] for x in records)
    summary = json.loads((run / "report.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
