"""One pipeline round, streamed: search → annotate → train run at the same time.

    driver thread:  problems ─ search (policy workers) ──► trees/  (a shard every 16 trees)
    driver thread:  trees/ as it grows ─ pair mining ─ AnnotatorWorker ─ DatasetSink ──► mmc-dataset/
    TorchTrainer:   mmc-dataset/data/train-* as it grows (earlier rounds' rows first) ──► training workers

Each stage writes the folder the stage-by-stage commands write, and the next one reads that folder
as it grows (`growing_shards`, a Ray Data source), so annotation starts on the first finished trees
and training on the first critiques, while the training workers (tens of seconds to start) come up
beside the search instead of in front of it. The search runs on the driver from the first second,
with the same code as `mmc-ray search`; only annotation and training wait for actors to start.
Later rounds, `mmc-ray annotate` and a rerun see ordinary folders; a round that crashed part-way is
finished stage by stage (those resume by id).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from mmc_ray.background import BackgroundTask
from mmc_ray.config import Config
from mmc_ray.orchestration.progress import RoundProgress
from mmc_ray.ray_runtime import actor_pool, require_resources
from mmc_ray.schemas import CRITIQUE_SCHEMA, TREE_SCHEMA
from mmc_ray.stages.annotate import annotate_dataset, annotate_metrics, make_split_of, write_outcomes
from mmc_ray.stages.dataset_card import write_card
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.dataset import DatasetWriter, finished_pair_ids
from mmc_ray.store.growing import TAIL_CPUS, mark_done, read_growing_shards
from mmc_ray.store.layout import TREES, data_dir

TREES_PER_SHARD = 16  # finished trees written (and so passed on) together: annotation starts early
LIGHT_CPUS = 0.1     # mining and rule annotation run beside the policy and training workers
SEARCH_DONE = "search-done.json"      # in the critic folder: the trees folder stops growing
UPSTREAM_DONE = "upstream-done.json"  # in the critic folder: the dataset folder stops growing
STREAM_BLOCK_BYTES = 1 << 17  # 128 KiB: a few trees, or a few dozen critiques, per block


class DatasetSink:
    """Outcome rows in: critiques and drops written to the dataset folder; their counts out."""

    def __init__(self, out_dir: str, shard_size: int) -> None:
        self.writer = DatasetWriter(out_dir, shard_size)
        self.metrics = annotate_metrics()

    def __call__(self, batch: pa.Table) -> pa.Table:
        critiques, drops = write_outcomes(batch, self.writer, self.metrics)
        self.writer.flush()  # on disk before the rows go on: a crash loses nothing written
        return pa.table({"critiques": [critiques], "drops": [drops]})


@contextlib.contextmanager
def _small_blocks() -> Iterator[None]:
    """Datasets made inside close their blocks small.

    Ray Data merges what a read yields into blocks of up to 128 MiB, so the shards a growing
    folder's reader yields would only move on when the whole read ends; at `STREAM_BLOCK_BYTES`
    they move on a few at a time. A dataset (and every one derived from it) keeps the context it
    was made with, so the switch stays local."""
    import ray.data

    context = ray.data.DataContext.get_current()
    previous = context.target_max_block_size
    context.target_max_block_size = STREAM_BLOCK_BYTES
    try:
        yield
    finally:
        context.target_max_block_size = previous


def _check_room(cfg: Config) -> None:
    """Everything of a streamed round runs at once; Ray would wait forever for a missing CPU."""
    policy = cfg.actor.resources.replicas * cfg.actor.resources.num_cpus
    training = cfg.train.num_workers * cfg.train.cpus_per_worker
    light = 2 * LIGHT_CPUS + 2 * TAIL_CPUS  # mining, rule annotation, the trees' and the dataset's readers
    require_resources(f"streamed round (policy workers {policy:g} CPU + training workers {training:g} + "
                      f"data stages {light:g})", {"CPU": policy + training + light},
                      fix="lower actor.resources.num_cpus or train.cpus_per_worker, or set "
                          "pipeline.streaming=false")


def _annotate_graph(cfg: Config, trees_dir: Path, search_done: Path, dataset_dir: Path) -> Any:
    """trees/ as it grows → annotate → the dataset folder, as one Ray Data graph (not yet running)."""
    with _small_blocks():
        trees = read_growing_shards(trees_dir, TREES, search_done, TREE_SCHEMA)
    split_of = make_split_of(cfg.annotate.split_fractions, cfg.annotate.seed)
    outcomes = annotate_dataset(trees, cfg, split_of, skip=finished_pair_ids(dataset_dir),
                                light_cpus=LIGHT_CPUS)
    return outcomes.map_batches(
        DatasetSink, batch_size=None,
        fn_constructor_kwargs={"out_dir": str(dataset_dir), "shard_size": cfg.annotate.shard_size},
        batch_format="pyarrow", compute=actor_pool(1), num_cpus=0)


def _count_outcomes(graph: Any, progress: RoundProgress) -> dict[str, int]:
    counts = {"critiques": 0, "drops": 0}
    for row in graph.iter_rows():
        for key in counts:
            counts[key] += row[key]
        progress.outcomes(row["critiques"], row["drops"])
    return counts


def _folder_writer(name: str, work: Callable[[], Any], done_file: Path) -> BackgroundTask:
    """`work` on a driver thread; when it ends, `done_file` tells the folder's readers whether it
    failed and why, so none of them waits forever."""
    return BackgroundTask(name, work, on_exit=lambda error: mark_done(
        done_file, error=None if error is None else f"{type(error).__name__}: {error}"))


def _outcome(stage: BackgroundTask) -> Any:
    try:
        return stage.join()
    except BaseException as e:
        raise RuntimeError(f"streamed round: {stage.name} failed") from e


def streamed_round(cfg: Config, problems_path: Path, trees_dir: Path, dataset_dir: Path,
                   critic_dir: Path, show_progress: bool = True) -> Any:
    """Search into `trees_dir` and annotate into `dataset_dir` while the critic trains on it, all
    on one progress line; returns the trainer's `TrainSummary`."""

    from mmc_ray.orchestration.commands import print_search_summary
    from mmc_ray.ray_runtime import init_ray
    from mmc_ray.tasks.benchmark import load_problem_file
    from mmc_ray.train.trainer import train
    from mmc_ray.workers.dispatch import RayDispatcher, RetryPolicy
    from mmc_ray.workers.group import create_worker_group
    from mmc_ray.workers.role_worker import PolicyWorker

    init_ray()
    _check_room(cfg)
    problems = load_problem_file(problems_path, duplicate_ids=cfg.tasks.duplicate_ids)
    search_done, upstream_done = critic_dir / SEARCH_DONE, critic_dir / UPSTREAM_DONE
    for done_file in (search_done, upstream_done):
        done_file.unlink(missing_ok=True)
    search_cfg = dataclasses.replace(cfg.search, shard_size=min(cfg.search.shard_size, TREES_PER_SHARD))
    stop = threading.Event()
    group = create_worker_group(PolicyWorker, cfg.actor)
    progress = RoundProgress(len(problems), cfg.train.max_steps, enabled=show_progress)
    try:
        dispatcher = RayDispatcher.for_engines(group.workers, cfg.actor)
        search = _folder_writer("search", lambda: search_to_dir(
            problems, dispatcher, search_cfg, trees_dir, stop=stop, bar=progress,
            retry=RetryPolicy.for_role(cfg.actor.resources)), search_done)
        graph = _annotate_graph(cfg, trees_dir, search_done, dataset_dir)
        annotation = _folder_writer("annotation", lambda: _count_outcomes(graph, progress), upstream_done)
        with _small_blocks():
            rows = read_growing_shards(data_dir(dataset_dir), "train", upstream_done, CRITIQUE_SCHEMA)
        try:
            summary = train(cfg, dataset_dir, critic_dir, stream=rows, on_progress=progress.train_step)
        except BaseException:
            causes = [stage for stage in (search, annotation) if stage.error is not None]
            stop.set()  # the search stops at its next batch, annotation when its trees folder is done
            for stage in (search, annotation):
                stage.wait()  # finished trees and critiques are written (a rerun resumes from them)
            if causes:  # the root cause, not the trainer's echo of it
                _outcome(causes[0])
            raise
        # A fit that reached max_steps early leaves the search running: it finishes with its workers.
        searched, counts = _outcome(search), _outcome(annotation)
    finally:
        stop.set()  # a search still running (the round failed before training) stops before its workers go
        group.shutdown()
        progress.close()
    print_search_summary(searched, trees_dir)
    print(f"annotate: {counts['critiques']} critiques, {counts['drops']} drops (streamed)")
    write_card(dataset_dir, cfg)
    return summary
