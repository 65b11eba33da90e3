"""The LLM annotator path end to end with the tiny HF VLM. Its outputs are garbage, so what is
checked is the accounting: nothing crashes and every pair is a critique row or a counted drop."""

import dataclasses

import pyarrow.parquet as pq

from mmc_ray.config import Config, EngineConfig, SearchConfig, SimulatorConfig
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.stages.annotate import annotate_to_dir, mine_tree_rows
from mmc_ray.stages.dataset_card import card_stats
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.generator import generate_problems
from mmc_ray.workers.dispatch import LocalDispatcher


def test_llm_annotation_with_tiny_vlm_accounts_for_every_pair(tiny_vlm_path, tmp_path):
    trees = tmp_path / "trees"
    search_to_dir(list(generate_problems(6, seed=21)),
                  LocalDispatcher(SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.3))),
                  SearchConfig(num_simulations=6, rollouts_per_node=3), trees, progress=False)
    cfg = Config()
    cfg = dataclasses.replace(
        cfg,
        annotator=EngineConfig(kind="hf", model_path=str(tiny_vlm_path), device="cpu", dtype="float32",
                               max_pixels=56 * 56),
        annotate=dataclasses.replace(cfg.annotate, method="llm", max_new_tokens=24, max_repair_attempts=1),
    )
    summary = annotate_to_dir(trees, tmp_path / "ds", cfg, local=True, progress=False)
    tree_rows = [r for p in shard_paths(trees, "trees") for r in pq.read_table(p).to_pylist()]
    expected = {r.pair_id for r in mine_tree_rows(tree_rows, cfg.annotate)}
    assert expected and summary.critiques + summary.drops == len(expected)
    stats = card_stats(tmp_path / "ds")
    assert stats["rows"] + stats["drops"] == len(expected)
    assert all(reason.startswith(("unparseable after 2 attempt(s)", "engine error"))
               for reason in stats["drop_reason"])
    assert (tmp_path / "ds" / "README.md").exists()
