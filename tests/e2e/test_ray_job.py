"""`ray job submit` against a Ray head this test starts on 127.0.0.1 (and stops): the tiny pipeline
runs as a job to SUCCEEDED on a user's own problems (a MathVista-style JSONL with image files and no
step programs, tests/user_data.py) for two rounds, and leaves its outputs."""

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

from mmc_ray.tasks.problem import read_problems

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head():
    ray_bin = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
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


def test_pipeline_job_on_a_users_problems_succeeds_and_writes_its_outputs(ray_head, tmp_path):
    url, ray_bin, env = ray_head
    out = tmp_path / "run"
    train = write_user_jsonl(tmp_path / "data" / "train.jsonl", 12, seed=1)
    held_out = write_user_jsonl(tmp_path / "data" / "eval.jsonl", 4, seed=99)

    runtime_env = {"env_vars": {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
                                "TORCH_EXTENSIONS_DIR": env["TORCH_EXTENSIONS_DIR"]}}
    command = [str(ray_bin), "job", "submit", "--address", url, "--submission-id", "tiny-pipeline",
               "--runtime-env-json", json.dumps(runtime_env),
               "--", sys.executable, str(ROOT / "jobs" / "pipeline.py"), "--out", str(out), "--tiny-model",
               "--problems", str(train), "--eval-problems", str(held_out), "--rounds", "2",
               "annotate.method=mc", "pipeline.problems_per_round=6", "train.max_steps=2", "refine.max_rounds=1",
               "refine.critic_max_new_tokens=24"]

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
    assert (out / "round-2" / "critic" / "hf" / "config.json").exists()
    searched = [read_problems(out / f"round-{r}" / "problems.parquet") for r in (1, 2)]
    ids = [p.problem_id for round_problems in searched for p in round_problems]
    assert len(ids) == len(set(ids)) == 12 and all(i.startswith("train-") for i in ids)  # fresh slices
    assert not any(p.steps for round_problems in searched for p in round_problems)
    assert summary["oracle"]["kind"] == "answer"  # no step programs: the oracle knows final answers only
    assert all("processbench_f1" in r for r in summary["rounds"])
    md = (out / "report.md").read_text()
    assert "ProcessBench F1" in md and "| oracle (answer) |" in md
    assert "with the `mc` annotator" in (out / "mmc-dataset" / "README.md").read_text()
    rows = pq.read_table(out / "mmc-dataset" / "data").to_pylist()
    assert rows and {r["annotator"] for r in rows} == {"mc"}
