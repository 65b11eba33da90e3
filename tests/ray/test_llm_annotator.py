"""The LLM annotator end to end with a real model that writes critiques: the tiny VLM fine-tuned by our
trainer as an annotator (`train.task=annotator`, rule critiques of annotator prompts), then
`annotate.method=llm` with it on pairs from problems it never saw."""

import dataclasses

import pyarrow.parquet as pq
import pytest

from mmc_ray.config import Config, EngineConfig, SearchConfig, SimulatorConfig
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.stages.annotate import annotate_to_dir, mine_tree_rows
from mmc_ray.stages.dataset_card import card_stats
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.layout import split_shards
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.train.trainer import train
from mmc_ray.workers.dispatch import LocalDispatcher

pytestmark = pytest.mark.slow
SEARCH = SearchConfig(num_simulations=6, rollouts_per_node=3)


def searched(folder, n, seed):
    search_to_dir(list(generate_problems(n, seed=seed)),
                  LocalDispatcher(SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.3))),
                  SEARCH, folder, progress=False)
    return folder


def test_a_trained_tiny_annotator_writes_critiques_that_parse(ray_local, tiny_vlm_path, tmp_path):
    base = Config()
    rule = dataclasses.replace(base, annotate=dataclasses.replace(base.annotate, split_fractions=(1.0, 0.0, 0.0)))
    annotate_to_dir(searched(tmp_path / "trees", 12, seed=41), tmp_path / "rule-ds", rule, local=True,
                    progress=False)
    fit = dataclasses.replace(rule, train=dataclasses.replace(
        base.train, task="annotator", init_model=str(tiny_vlm_path), num_workers=1, cpus_per_worker=1.0,
        max_steps=200, checkpoint_every=200, learning_rate=5e-3, warmup_steps=5, tokens_per_step=2048,
        max_seq_len=2048, wandb_project=""))
    summary = train(fit, tmp_path / "rule-ds", tmp_path / "annotator", progress=False)
    assert summary.losses[-1] < summary.losses[0] / 4

    held_out = searched(tmp_path / "held-out", 6, seed=9000)
    llm = dataclasses.replace(rule, annotator=EngineConfig(
        kind="hf", model_path=str(summary.exported), device="cpu", dtype="float32", max_pixels=112 * 112),
        annotate=dataclasses.replace(rule.annotate, method="llm", temperature=0.0, max_repair_attempts=1))
    result = annotate_to_dir(held_out, tmp_path / "llm-ds", llm, local=True, progress=False)

    tree_rows = [r for p in shard_paths(held_out, "trees") for r in pq.read_table(p).to_pylist()]
    expected = {r.pair_id for r in mine_tree_rows(tree_rows, llm.annotate)}
    stats = card_stats(tmp_path / "llm-ds")
    assert expected and result.critiques + result.drops == len(expected) == stats["rows"] + stats["drops"]
    assert result.critiques > 0, stats["drop_reason"]  # the model writes critiques that parse
    assert all(reason.startswith("unparseable after 2 attempt(s)") for reason in stats["drop_reason"])
    rows = [r for p in split_shards(tmp_path / "llm-ds", "train") for r in pq.read_table(p).to_pylist()]
    assert {r["annotator"] for r in rows} == {"llm"}
    assert all(r["critique_text"].startswith(f"Verdict: {r['verdict']}") for r in rows)
