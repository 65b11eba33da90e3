"""A streamed round (search → annotate → train as one Ray Data graph) on a real local Ray writes
what the stage-by-stage commands write, and trains on it."""

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmc_ray.config import Config, ResourcesConfig, SimulatorConfig
from mmc_ray.pipeline import stages
from mmc_ray.pipeline.dataset_card import card_stats
from mmc_ray.pipeline.streaming import UPSTREAM_DONE, streamed_round

pytestmark = pytest.mark.slow


def round_cfg(model):
    cfg = Config()
    return dataclasses.replace(
        cfg,
        tasks=dataclasses.replace(cfg.tasks, n=12, seed=5),
        actor=dataclasses.replace(cfg.actor, kind="simulated", simulator=SimulatorConfig(observe_error_rate=0.3),
                                  resources=ResourcesConfig(replicas=2, num_cpus=0.25)),
        search=dataclasses.replace(cfg.search, num_simulations=6),
        train=dataclasses.replace(cfg.train, init_model=str(model), num_workers=2, cpus_per_worker=0.5,
                                  max_steps=3, checkpoint_every=3, tokens_per_step=2048, max_seq_len=2048))


def test_streamed_round_matches_stage_by_stage_outputs(ray_local, tiny_vlm_path, tmp_path):
    cfg = round_cfg(tiny_vlm_path)
    problems = tmp_path / "problems.parquet"
    stages.write_tasks(cfg.tasks, problems)
    streamed = streamed_round(cfg, problems, tmp_path / "s" / "trees", tmp_path / "s" / "ds", tmp_path / "s" / "critic")
    assert streamed.metrics["step"] == 3 and (tmp_path / "s" / "critic" / "hf" / "config.json").exists()
    stages.search(cfg, problems, tmp_path / "q" / "trees")
    stages.annotate(cfg, tmp_path / "q" / "trees", tmp_path / "q" / "ds")

    def ids(folder, column):
        return sorted(pq.read_table(folder, columns=[column]).column(column).to_pylist())

    assert ids(tmp_path / "s" / "trees", "problem_id") == ids(tmp_path / "q" / "trees", "problem_id")
    assert ids(tmp_path / "s" / "ds" / "data", "pair_id") == ids(tmp_path / "q" / "ds" / "data", "pair_id")
    assert card_stats(tmp_path / "s" / "ds")["rows"] == card_stats(tmp_path / "q" / "ds")["rows"] > 0
    assert (tmp_path / "s" / "ds" / "README.md").exists()


def test_a_streamed_round_that_cannot_fit_says_so(ray_local, tiny_vlm_path, tmp_path):
    cfg = round_cfg(tiny_vlm_path)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cpus_per_worker=0.9))
    with pytest.raises(RuntimeError, match=r"pipeline\.streaming=false"):
        streamed_round(cfg, tmp_path / "p.parquet", tmp_path / "t", tmp_path / "d", tmp_path / "c")


def test_an_upstream_failure_fails_the_round_with_its_cause(ray_local, tiny_vlm_path, tmp_path):
    """The search fails (problem rows without their columns) while the trainer waits on the dataset
    folder: the trainer is told through the done file instead of waiting forever, and the round
    raises the search's error as the cause."""
    problems = tmp_path / "p.parquet"
    pq.write_table(pa.table({"problem_id": ["a", "b"]}), problems)
    with pytest.raises(RuntimeError, match="search/annotation failed") as failure:
        streamed_round(round_cfg(tiny_vlm_path), problems, tmp_path / "t", tmp_path / "d", tmp_path / "c")
    assert "family" in str(failure.value.__cause__)
    assert "family" in json.loads((tmp_path / "c" / UPSTREAM_DONE).read_text())["error"]
