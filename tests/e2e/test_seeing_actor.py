"""The shipped seeing base as a real actor: `mmc-ray pipeline` with `actor.kind=hf` searches, annotates,
trains a critic from the same base and refines with it, on a learned model instead of the simulator."""

import json

import pyarrow.parquet as pq
import pytest
from test_cli import mmc_ray

from mmc_ray.models.shipped import SEEING_BASE

pytestmark = pytest.mark.slow


def test_the_pipeline_runs_end_to_end_on_the_shipped_base_as_actor(tmp_path):
    out = tmp_path / "run"
    proc = mmc_ray("pipeline", "--out", str(out), "actor.kind=hf", f"actor.model_path={SEEING_BASE}",
                   "actor.device=cpu", "actor.dtype=float32", f"train.init_model={SEEING_BASE}", "tasks.n=4",
                   "pipeline.eval_problems=4", "pipeline.oracle_baseline=false", "pipeline.blind_baseline=false",
                   "pipeline.refine_train_problems=false", "search.num_simulations=3", "search.expansion_width=2",
                   "search.rollouts_per_node=1", "train.max_steps=2", "train.num_workers=1", "refine.max_rounds=1",
                   "refine.critic_max_new_tokens=48", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trees = pq.read_table(out / "round-1" / "trees").to_pylist()
    assert len(trees) == 4
    summary = json.loads((out / "report.json").read_text())
    (round_1,) = summary["rounds"]
    assert round_1["actor"]["model"] == str(SEEING_BASE)
    records = pq.read_table(out / "round-1" / "refine" / "records").to_pylist()
    assert {r["problem_id"] for r in records if r["final"]} == {r["problem_id"] for r in records if r["round"] == 0}
    assert all(r["text"] for r in records)  # the learned actor wrote every answer
