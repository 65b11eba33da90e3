"""`ray job submit` against a Ray head this test starts on 127.0.0.1 (and stops): the tiny pipeline
runs as a job to SUCCEEDED on a user's own problems (a MathVista-style JSONL with image files and no
step programs, tests/user_data.py) for two rounds, each round's critic a LoRA adapter on the tiny base,
retraining the tiny HF actor between them, and leaves its outputs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from serve_payloads import free_port
from user_data import write_user_jsonl

from mmc_ray.ray_runtime import SINGLE_MACHINE_RAY
from mmc_ray.tasks.benchmark import load_problem_file
from mmc_ray.tasks.problem import read_problems, write_problems

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head():
    ray_bin = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **dict([SINGLE_MACHINE_RAY])}  # listens on loopback only
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
         "--port", str(free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         # a short temp dir: Ray's socket paths must stay under the 107-byte Unix limit
         "--include-dashboard", "true", "--disable-usage-stats", "--temp-dir", temp_dir],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except OSError:
            assert head.poll() is None and time.time() < deadline, "the Ray head did not come up"
            time.sleep(1)
    yield url, ray_bin, env
    os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops everything it started
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:  # its graceful stop takes ~30 s; the test's cluster has nothing to keep
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_pipeline_job_on_a_users_problems_retrains_the_actor_and_writes_its_outputs(ray_head, tmp_path):
    """Two rounds on a user's JSONL (no step programs, `mc` annotator) with the tiny HF actor retrained
    on its correct paths after round 1. A random-weight model never answers right, so round 1's trees
    are searched beforehand with the simulated actor (the pipeline resumes from trees on disk); the
    actor fine-tuned on their correct paths then searches and refines round 2."""
    url, ray_bin, env = ray_head
    out = tmp_path / "run"
    train = write_user_jsonl(tmp_path / "data" / "train.jsonl", 12, seed=1)
    held_out = write_user_jsonl(tmp_path / "data" / "eval.jsonl", 4, seed=99)
    first_slice = out / "round-1" / "problems.parquet"  # what the pipeline would write for round 1
    first_slice.parent.mkdir(parents=True)
    write_problems(load_problem_file(train)[:6], first_slice)
    searched = subprocess.run([sys.executable, "-m", "mmc_ray.cli", "search", "--local", "--problems", str(first_slice),
                               "--out", str(out / "round-1" / "trees"), "actor.kind=simulated",
                               "search.num_simulations=6"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert searched.returncode == 0, searched.stderr

    runtime_env = {"env_vars": {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
                                "TORCH_EXTENSIONS_DIR": env["TORCH_EXTENSIONS_DIR"]}}
    small = ("search.num_simulations=2", "search.expansion_width=2", "search.rollouts_per_node=1",
             "search.step_max_tokens=16", "search.rollout_max_tokens=32", "refine.max_rounds=1",
             "refine.actor_max_new_tokens=32", "refine.critic_max_new_tokens=24")
    command = [str(ray_bin), "job", "submit", "--address", url, "--submission-id", "tiny-pipeline",
               "--runtime-env-json", json.dumps(runtime_env),
               "--", sys.executable, str(ROOT / "jobs" / "pipeline.py"), "--out", str(out), "--tiny-model",
               "--problems", str(train), "--eval-problems", str(held_out), "--rounds", "2",
               "annotate.method=mc", "pipeline.problems_per_round=6", "train.max_steps=2", "train.num_workers=1",
               "actor.kind=hf", f"actor.model_path={out / 'tiny-vlm'}", "pipeline.retrain_actor=true",
               "pipeline.actor_max_steps=3", "train.lora.enabled=true", "train.lora.merged=false", *small]

    def submit() -> subprocess.CompletedProcess:
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)

    job = submit()
    deadline = time.time() + 300
    # The dashboard answers before the head's job agent is up (minutes on a busy 2-core box): submit again.
    while job.returncode != 0 and "No available agent" in job.stdout + job.stderr and time.time() < deadline:
        time.sleep(3)
        job = submit()
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    with urllib.request.urlopen(f"{url}/api/jobs/tiny-pipeline", timeout=30) as reply:
        assert json.load(reply)["status"] == "SUCCEEDED"
    summary = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and summary["problems"] == str(train)
    # train.lora without a merged export: each round's critic is its own adapter on the first base.
    for r in (1, 2):
        adapter = out / f"round-{r}" / "critic" / "adapter"
        assert (adapter / "adapter_config.json").exists() and not (out / f"round-{r}" / "critic" / "hf").exists()
        assert summary["rounds"][r - 1]["adapter"] == {f"critic-r{r}": str(adapter)}
    assert f"mmc-ray serve --checkpoint {out / 'tiny-vlm'} --adapter critic-r1=" in job.stdout
    # The user's problems: fresh slices, no step programs, an answer oracle, ProcessBench F1, mc.
    searched_problems = [read_problems(out / f"round-{r}" / "problems.parquet") for r in (1, 2)]
    ids = [p.problem_id for round_problems in searched_problems for p in round_problems]
    assert len(ids) == len(set(ids)) == 12 and all(i.startswith("train-") for i in ids)
    assert not any(p.steps for round_problems in searched_problems for p in round_problems)
    assert len(pq.read_table(out / "round-2" / "trees").to_pylist()) == 6
    assert summary["oracle"]["kind"] == "answer"  # no step programs: the oracle knows final answers only
    assert all("processbench_f1" in r for r in summary["rounds"])
    md = (out / "report.md").read_text()
    assert "ProcessBench F1" in md and "| oracle (answer) |" in md
    assert "with the `mc` annotator" in (out / "mmc-dataset" / "README.md").read_text()
    assert {r["annotator"] for r in pq.read_table(out / "mmc-dataset" / "data").to_pylist()} == {"mc"}
    # The actor retrained on round 1's correct paths answers round 2.
    by_id = {p.problem_id: p for p in searched_problems[0]}
    solutions = pq.read_table(out / "round-1" / "actor-sft" / "actor-sft.parquet").to_pylist()
    assert solutions and all(r["problem_id"] in by_id for r in solutions)
    for row in solutions:  # every solution is a path the search judged correct, ending in the answer
        assert row["solution"].startswith("Step 1: ")
        assert row["solution"].rsplit("Answer: ", 1)[1].strip() == by_id[row["problem_id"]].answer
    first, second = (r["actor"] for r in summary["rounds"])
    assert first["model"] == str(out / "tiny-vlm")
    assert first["fine_tuned"]["solutions"] == len(solutions) and first["fine_tuned"]["steps"] == 3
    assert second == {"model": str(out / "round-1" / "actor" / "hf")}  # the last round trains no actor
    assert f"actor {out / 'round-1' / 'actor' / 'hf'}" in md
    # A rerun does not train an exported actor again: tests/unit/test_flywheel.py.
