"""One pipeline round, streamed: search → annotate → train run at the same time.

    driver thread:  problems ─ TreeSearchStage ─ TreeSink ─ pair mining ─ AnnotatorWorker ─ DatasetSink
                               (policy workers)  trees/                                    mmc-dataset/
    TorchTrainer:   mmc-dataset/data/train-* as it grows (earlier rounds' rows first) ──► training workers

The upstream is one Ray Data graph the driver runs from the first second; the trainer reads the
dataset folder as the graph writes it (`growing_shards`), so annotation starts on the first
finished trees and training on the first critiques, while the training workers (tens of seconds to
start) come up beside the search instead of in front of it. The sinks write the same shard folders
the stage-by-stage commands write (trees and the dataset with its card), so later rounds,
`mmc-ray annotate` and a rerun see ordinary folders. A round that crashed part-way is finished stage
by stage (those resume by id).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
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
from mmc_ray.pipeline.growing_shards import TAIL_CPUS, mark_done, read_growing_shards
from mmc_ray.pipeline.search import TREE_SHARD_PREFIX, search_dataset
from mmc_ray.pipeline.shards import ShardWriter
from mmc_ray.ray_runtime import actor_pool
from mmc_ray.schemas import CRITIQUE_SCHEMA, DROP_SCHEMA, TREE_SCHEMA
from mmc_ray.workers.annotator import split_outcomes

TREES_EMITTED_TOGETHER = 16  # finished trees passed on as one block: annotation starts early
LIGHT_CPUS = 0.1     # mining and rule annotation run beside the policy and training workers
UPSTREAM_DONE = "upstream-done.json"  # in the critic folder: the dataset folder stops growing
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
    """Outcome rows in: critiques and drops written to the dataset folder; their counts out."""

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
        return pa.table({"critiques": [len(critiques)], "drops": [len(drops)]})


@contextlib.contextmanager
def _small_blocks() -> Iterator[None]:
    """Datasets made inside read with little CPU and close their blocks small.

    The datasource-v2 reader lists files in a task that always asks for a whole CPU, which a box
    this full does not have. Ray Data merges what a stage yields into blocks of up to 128 MiB, so
    the trees a search task finishes (or the shards the trainer's tail reads) would only move on
    when the whole task ends; at `STREAM_BLOCK_BYTES` they move on a few at a time. A dataset (and
    every one derived from it) keeps the context it was made with, so both switches stay local."""
    import ray.data

    context = ray.data.DataContext.get_current()
    previous = context.use_datasource_v2, context.target_max_block_size
    context.use_datasource_v2, context.target_max_block_size = False, STREAM_BLOCK_BYTES
    try:
        yield
    finally:
        context.use_datasource_v2, context.target_max_block_size = previous


def _check_room(cfg: Config, cpus: float) -> None:
    """Everything of a streamed round runs at once; Ray would wait forever for a missing CPU."""
    from mmc_ray.train.trainer import READ_CPUS

    policy = cfg.actor.resources.replicas * cfg.actor.resources.num_cpus
    training = cfg.train.num_workers * cfg.train.cpus_per_worker
    light = 2 * LIGHT_CPUS + READ_CPUS + TAIL_CPUS  # mining, rule annotation, problems read, dataset tail
    if policy + training + light > cpus:
        raise RuntimeError(
            f"streamed round: policy workers ({policy:g} CPU) + training workers ({training:g}) + data "
            f"stages ({light:g}) need more than the cluster's {cpus:g} CPUs; lower actor.resources.num_cpus "
            f"or train.cpus_per_worker, or set pipeline.streaming=false")


def _upstream(cfg: Config, problems_path: Path, trees_dir: Path, dataset_dir: Path, workers: list) -> Any:
    """search → annotate → the dataset folder, as one Ray Data graph (not yet running)."""
    import ray.data

    from mmc_ray.train.trainer import READ_CPUS

    with _small_blocks():
        problems = ray.data.read_parquet(str(problems_path), num_cpus=READ_CPUS)
    trees = search_dataset(problems, workers, cfg.search, emit_every=TREES_EMITTED_TOGETHER)
    trees = trees.map_batches(TreeSink, fn_constructor_kwargs={"out_dir": str(trees_dir)},
                              batch_size=None, batch_format="pyarrow", compute=actor_pool(1), num_cpus=0)
    split_of = make_split_of(cfg.annotate.split_fractions, cfg.annotate.seed)
    outcomes = annotate_dataset(trees, cfg, split_of, skip=finished_pair_ids(dataset_dir),
                                light_cpus=LIGHT_CPUS)
    return outcomes.map_batches(
        DatasetSink, batch_size=None,
        fn_constructor_kwargs={"out_dir": str(dataset_dir), "shard_size": cfg.annotate.shard_size},
        batch_format="pyarrow", compute=actor_pool(1), num_cpus=0)


class _UpstreamRun:
    """Runs the upstream graph on a driver thread; marks the dataset folder done (or failed) at the end."""

    def __init__(self, graph: Any, done_file: Path) -> None:
        self.counts = {"critiques": 0, "drops": 0}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(graph, done_file), name="upstream",
                                        daemon=True)
        self._thread.start()

    def _run(self, graph: Any, done_file: Path) -> None:
        try:
            for counts in graph.iter_rows():
                for key in self.counts:
                    self.counts[key] += counts[key]
        except BaseException as e:  # the trainer's reader raises it too; the driver re-raises it here
            self.error = e
            mark_done(done_file, error=f"{type(e).__name__}: {e}")
        else:
            mark_done(done_file)

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise RuntimeError("streamed round: search/annotation failed") from self.error


def streamed_round(cfg: Config, problems_path: Path, trees_dir: Path, dataset_dir: Path,
                   critic_dir: Path) -> Any:
    """Search and annotate into `dataset_dir` while the critic trains on it; returns the trainer's
    `TrainSummary`."""
    import ray

    from mmc_ray.ray_runtime import init_ray
    from mmc_ray.train.trainer import train
    from mmc_ray.workers.group import create_worker_group
    from mmc_ray.workers.role_worker import PolicyWorker

    init_ray()
    _check_room(cfg, ray.cluster_resources().get("CPU", 0.0))
    done_file = critic_dir / UPSTREAM_DONE
    done_file.unlink(missing_ok=True)
    group = create_worker_group(PolicyWorker, cfg.actor)
    try:
        graph = _upstream(cfg, problems_path, trees_dir, dataset_dir, group.workers)
        upstream = _UpstreamRun(graph, done_file)
        with _small_blocks():
            rows = read_growing_shards(dataset_dir / "data", "train", done_file, CRITIQUE_SCHEMA)
        try:
            summary = train(cfg, dataset_dir, critic_dir, stream=rows)
        except BaseException:
            if upstream.error is not None:  # the root cause, not the trainer's echo of it
                upstream.join()
            raise
    finally:
        group.shutdown()  # a failed fit ends the search too: its policy workers are gone
    upstream.join()
    print(f"annotate: {upstream.counts['critiques']} critiques, {upstream.counts['drops']} drops (streamed)")
    write_card(dataset_dir, cfg)
    return summary
