"""A streamed round (search → annotate → train at once, each reading the folder the one before writes)
on a real local Ray writes what the stage-by-stage commands write, and trains on it."""

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from mmc_ray.config import Config, ResourcesConfig, SimulatorConfig
from mmc_ray.orchestration import commands
from mmc_ray.orchestration.streaming import SEARCH_DONE, UPSTREAM_DONE, streamed_round
from mmc_ray.stages.dataset_card import card_stats
from mmc_ray.store.layout import TREES
from mmc_ray.store.shards import finished_ids

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


def test_streamed_round_matches_stage_by_stage_outputs(ray_local, tiny_vlm_path, tmp_path, capsys):
    cfg = round_cfg(tiny_vlm_path)
    problems = tmp_path / "problems.parquet"
    commands.write_tasks(cfg.tasks, problems)
    streamed = streamed_round(cfg, problems, tmp_path / "s" / "trees", tmp_path / "s" / "ds", tmp_path / "s" / "critic")
    assert streamed.metrics["step"] == 3 and (tmp_path / "s" / "critic" / "hf" / "config.json").exists()
    # one live line for the three stages: every tree, the critiques written, the train steps
    line = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "round: 100%" in line and "12/12" in line and "step=3/3" in line and "critiques=" in line
    commands.search(cfg, problems, tmp_path / "q" / "trees")
    commands.annotate(cfg, tmp_path / "q" / "trees", tmp_path / "q" / "ds")

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


def test_a_search_failure_fails_the_round_with_its_cause(ray_local, tiny_vlm_path, tmp_path, monkeypatch):
    """The search fails (a problem id appears twice: the loader refuses that in a file, so the list
    is handed over as is) while annotation waits on the trees folder and the trainer on the dataset
    folder: both are told through the done files instead of waiting forever, and the round raises
    the search's error as the cause."""
    from mmc_ray.tasks import benchmark

    cfg = round_cfg(tiny_vlm_path)
    problems = tmp_path / "p.parquet"
    commands.write_tasks(cfg.tasks, problems)
    loaded = benchmark.load_problem_file(problems)
    monkeypatch.setattr(benchmark, "load_problem_file", lambda path, **kw: [*loaded, loaded[0]])
    with pytest.raises(RuntimeError, match="streamed round: search failed") as failure:
        streamed_round(cfg, problems, tmp_path / "t", tmp_path / "d", tmp_path / "c")
    assert "appears twice" in str(failure.value.__cause__)
    for done_file in (SEARCH_DONE, UPSTREAM_DONE):
        assert "appears twice" in json.loads((tmp_path / "c" / done_file).read_text())["error"]


def test_a_failed_fit_stops_the_search_and_keeps_its_finished_trees(ray_local, tiny_vlm_path, tmp_path):
    """The trainer fails (its model does not load) while the search still runs, each policy call
    taking 3 s: the round raises the trainer's error, and the search stops at its next batch, its
    finished trees written, instead of running on behind the failed round; a rerun resumes them."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    cfg = round_cfg(tiny_vlm_path)
    # A search of minutes (24 simulations of 3 s calls) that the fit's failure (~30 s, more on a busy
    # machine) always interrupts: with 6 it could finish first (CI once).
    cfg = dataclasses.replace(
        cfg, actor=dataclasses.replace(cfg.actor, simulator=SimulatorConfig(call_latency_s=3.0)),
        search=dataclasses.replace(cfg.search, num_simulations=24),
        train=dataclasses.replace(cfg.train, init_model=str(broken), max_failures=0))
    problems = tmp_path / "p.parquet"
    commands.write_tasks(cfg.tasks, problems)
    with pytest.raises(Exception, match="Training failed") as failure:
        streamed_round(cfg, problems, tmp_path / "t", tmp_path / "d", tmp_path / "c")
    assert "search failed" not in str(failure.value)
    assert "SearchStopped" in json.loads((tmp_path / "c" / SEARCH_DONE).read_text())["error"]
    kept = finished_ids(tmp_path / "t", TREES, "problem_id")
    assert len(kept) < cfg.tasks.n
    assert commands.search(round_cfg(tiny_vlm_path), problems, tmp_path / "t").resumed == len(kept)


def test_a_fit_that_ends_early_waits_for_the_search(ray_local, tiny_vlm_path, tmp_path):
    """Round 2 of a flywheel: the dataset already holds round 1's critiques, so a one-step fit ends
    long before a search whose policy calls take 3 s. The round waits for the search (its workers
    stay up) instead of ending it: every tree is searched whole, none with failed generations.
    One training worker: Ray Train's equal split holds a block back from two until more come."""
    cfg = round_cfg(tiny_vlm_path)
    earlier = tmp_path / "round-1-problems.parquet"
    commands.write_tasks(dataclasses.replace(cfg.tasks, n=48, seed=99), earlier)  # a few steps' worth
    commands.search(cfg, earlier, tmp_path / "round-1-trees")
    commands.annotate(cfg, tmp_path / "round-1-trees", tmp_path / "ds")
    rows_before = card_stats(tmp_path / "ds")["rows"]
    # 12 simulations of 3 s calls: a search of well over a minute, which a one-step fit (~40 s, more
    # on a busy machine) ends before; with 6 the two raced (CI once).
    cfg = dataclasses.replace(
        cfg, actor=dataclasses.replace(cfg.actor, simulator=SimulatorConfig(observe_error_rate=0.3, call_latency_s=3.0)),
        search=dataclasses.replace(cfg.search, num_simulations=12),
        train=dataclasses.replace(cfg.train, max_steps=1, checkpoint_every=1, num_workers=1))
    problems = tmp_path / "p.parquet"
    commands.write_tasks(cfg.tasks, problems)
    summary = streamed_round(cfg, problems, tmp_path / "t", tmp_path / "ds", tmp_path / "c")
    assert summary.metrics["step"] == 1
    search_ended = (tmp_path / "c" / SEARCH_DONE).stat().st_mtime
    assert (tmp_path / "c" / "hf" / "config.json").stat().st_mtime < search_ended  # the fit did end first
    assert json.loads((tmp_path / "c" / SEARCH_DONE).read_text())["error"] is None
    trees = pq.read_table(tmp_path / "t", columns=["problem_id", "failed_generations"]).to_pylist()
    assert len(trees) == cfg.tasks.n and sum(t["failed_generations"] for t in trees) == 0
    assert card_stats(tmp_path / "ds")["rows"] > rows_before
