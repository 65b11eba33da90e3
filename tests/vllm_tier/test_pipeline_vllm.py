"""`mmc-ray pipeline` with the critic on vLLM (`critic.kind=vllm`, its CPU build): the round's trained
critic is loaded by vLLM workers and refines with them, in a subprocess as a user runs it. One round
(every round takes the same path; two would add ~2 min to the tier)."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_the_round_refines_with_its_trained_critic_on_vllm(tmp_path):
    run = tmp_path / "run"
    args = ("demo", "--out", str(run), "--rounds", "1", "tasks.n=8", "pipeline.eval_problems=6",
            "pipeline.oracle_baseline=false", "train.max_steps=2", "refine.max_rounds=1",
            "refine.critic_max_new_tokens=24", "critic.kind=vllm", "critic.device=cpu", "critic.dtype=float32",
            "critic.vllm.cpu_kv_cache_gib=1", "critic.vllm.max_model_len=4096", "critic.vllm.max_images_per_prompt=1",
            "critic.resources.replicas=1")
    proc = subprocess.run([sys.executable, "-m", "mmc_ray.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    critic = run / "round-1" / "critic" / "hf"
    context = json.loads((run / "round-1" / "refine" / "report" / "report.json").read_text())["context"]
    assert context["critic"] == "critic[vllm]x1" and context["critic model"] == str(critic)
    records = pq.read_table(run / "round-1" / "refine" / "records").to_pylist()
    assert len({x["problem_id"] for x in records if x["final"]}) == 6 and any(x["critic_text"] for x in records)
    summary = json.loads((run / "report.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1] and summary["rounds"][0]["train"]["steps"] == 2
