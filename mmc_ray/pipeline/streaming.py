"""One pipeline round as a single streamed Ray Data graph: search → annotate → train.

    problems ─ TreeSearchStage ─ TreeSink ─ pair mining ─ AnnotatorWorker ─ DatasetSink ─┐
               (policy workers)  trees/                                   mmc-dataset/ │
    rows already in mmc-dataset/data/train-* ──────────────────────────────── union ─────┴─► TorchTrainer

The trainer's workers pull from the graph while it runs: annotation starts on the first finished
trees and training on the first critiques, instead of each stage waiting for the previous one to
write everything. The sinks write the same shard folders the stage-by-stage commands write (trees
and the dataset with its card), so later rounds, `mmc-ray annotate` and a rerun see ordinary
folders. A round that crashed part-way is finished stage by stage (those resume by id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from mmc_ray.config import Config
from mmc_ray.pipeline.annotate import (
    DROPS_PREFIX,
    annotate_dataset,
    annotate_metrics,
    finished_pair_ids,
    make_split_of,
)
from mmc_ray.pipeline.dataset_card import SPLITS, write_card
from mmc_ray.pipeline.search import TREE_SHARD_PREFIX, search_dataset
from mmc_ray.pipeline.shards import ShardWriter, shard_paths
from mmc_ray.ray_runtime import actor_pool
from mmc_ray.schemas import CRITIQUE_SCHEMA, DROP_SCHEMA, TREE_SCHEMA
from mmc_ray.workers.annotator import split_outcomes

TREES_EMITTED_TOGETHER = 16  # finished trees passed on as one block: annotation starts early
LIGHT_CPUS = 0.1     # mining and rule annotation run beside the policy and training workers
STREAM_BLOCK_BYTES = 1 << 17  # 128 KiB: a few trees, or a few dozen critiques, per block


class TreeSink:
    """Pass-through stage that writes every batch of tree rows as one shard."""

    def __init__(self, out_dir: str) -> None:
        self.writer = ShardWriter(out_dir, TREE_SHARD_PREFIX, TREE_SCHEMA, shard_size=1 << 30)

    def __call__(self, batch: pa.Table) -> pa.Table:
        for row in batch.to_pylist():
            self.writer.add(row)
        self.writer.flush()
        return batch


class DatasetSink:
    """Outcome rows in: critiques and drops written to the dataset folder; the train split's
    critique rows out (what the trainer reads)."""

    def __init__(self, out_dir: str, shard_size: int) -> None:
        out = Path(out_dir)
        self.writers = {s: ShardWriter(out / "data", s, CRITIQUE_SCHEMA, shard_size) for s in SPLITS}
        self.drops = ShardWriter(out / DROPS_PREFIX, DROPS_PREFIX, DROP_SCHEMA, shard_size)
        self.metrics = annotate_metrics()

    def __call__(self, batch: pa.Table) -> pa.Table:
        critiques, drops = split_outcomes(batch)
        self.metrics.inc("critiques", len(critiques))
        self.metrics.inc("drops", len(drops))
        for row in critiques:
            self.writers[row["split"]].add(row)
        for row in drops:
            self.drops.add(row)
        for writer in (*self.writers.values(), self.drops):
            writer.flush()  # on disk before the rows go on: a crash loses nothing written
        return pa.Table.from_pylist([r for r in critiques if r["split"] == "train"], schema=CRITIQUE_SCHEMA)


def _read(paths: str | list[str]) -> Any:
    """`read_parquet` whose tasks reserve little CPU, in a graph whose blocks close small.

    The datasource-v2 reader lists files in a task that always asks for a whole CPU, which a box
    this full does not have. Ray Data merges what a stage yields into blocks of up to 128 MiB, so
    the trees a search task finishes would only move on when the whole task ends; at
    `STREAM_BLOCK_BYTES` they move on a few at a time. A dataset (and every one derived from it)
    keeps the context it was made with, so both switches stay local to this graph."""
    import ray.data

    from mmc_ray.train.trainer import READ_CPUS

    context = ray.data.DataContext.get_current()
    previous = context.use_datasource_v2, context.target_max_block_size
    context.use_datasource_v2, context.target_max_block_size = False, STREAM_BLOCK_BYTES
    try:
        return ray.data.read_parquet(paths, num_cpus=READ_CPUS)
    finally:
        context.use_datasource_v2, context.target_max_block_size = previous


def _check_room(cfg: Config, cpus: float) -> None:
    """Everything of a streamed round runs at once; Ray would wait forever for a missing CPU."""
    policy = cfg.actor.resources.replicas * cfg.actor.resources.num_cpus
    training = cfg.train.num_workers * cfg.train.cpus_per_worker
    light = 2 * LIGHT_CPUS + 0.25  # mining, rule annotation, a read task
    if policy + training + light > cpus:
        raise RuntimeError(
            f"streamed round: policy workers ({policy:g} CPU) + training workers ({training:g}) + data "
            f"stages ({light:g}) need more than the cluster's {cpus:g} CPUs; lower actor.resources.num_cpus "
            f"or train.cpus_per_worker, or set pipeline.streaming=false")


def streamed_round(cfg: Config, problems_path: Path, trees_dir: Path, dataset_dir: Path,
                   critic_dir: Path) -> Any:
    """Search, annotate and train as one graph; returns the trainer's `TrainSummary`."""
    import ray.data

    from mmc_ray.ray_runtime import init_ray
    from mmc_ray.train.trainer import train
    from mmc_ray.workers.group import create_worker_group
    from mmc_ray.workers.role_worker import PolicyWorker

    init_ray()
    _check_room(cfg, ray.cluster_resources().get("CPU", 0.0))
    earlier = [str(p) for p in shard_paths(dataset_dir / "data", "train")]
    group = create_worker_group(PolicyWorker, cfg.actor)
    try:
        problems = _read(str(problems_path))
        trees = search_dataset(problems, group.workers, cfg.search, emit_every=TREES_EMITTED_TOGETHER)
        trees = trees.map_batches(TreeSink, fn_constructor_kwargs={"out_dir": str(trees_dir)},
                                  batch_size=None, batch_format="pyarrow", compute=actor_pool(1), num_cpus=0)
        split_of = make_split_of(cfg.annotate.split_fractions, cfg.annotate.seed)
        outcomes = annotate_dataset(trees, cfg, split_of, skip=finished_pair_ids(dataset_dir),
                                    light_cpus=LIGHT_CPUS)
        new_rows = outcomes.map_batches(
            DatasetSink, fn_constructor_kwargs={"out_dir": str(dataset_dir),
                                                "shard_size": cfg.annotate.shard_size},
            batch_size=None, batch_format="pyarrow", compute=actor_pool(1), num_cpus=0)
        if earlier:
            new_rows = new_rows.union(_read(earlier))
        summary = train(cfg, dataset_dir, critic_dir, stream=new_rows)
    finally:
        group.shutdown()
    write_card(dataset_dir, cfg)
    return summary
