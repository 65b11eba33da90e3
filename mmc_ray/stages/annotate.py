"""The annotate stage: search trees → divergent pairs → critiques → the MMC dataset folder.

    mmc-dataset/
      data/train-00000.parquet, data/validation-00000.parquet, data/test-00000.parquet
      drops/drops-00000.parquet      pairs that got no critique, with the reason
      README.md                      the dataset card

With Ray, trees stream through Ray Data: a mining stage, then an actor pool of `AnnotatorWorker`s,
and rows are written as they arrive. Splits are by problem (a problem's pairs share one split), so
no problem leaks between train and test. Reruns skip pair ids already written or dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mmc_ray.config import AnnotateConfig, Config
from mmc_ray.critique.records import PathToCritique
from mmc_ray.dashboard_metrics import StageMetrics
from mmc_ray.errors import BadInput, MissingInput
from mmc_ray.io import read_parquet
from mmc_ray.mcts.pairs import balanced_sample, mine_pairs_from_row
from mmc_ray.ray_runtime import actor_pool
from mmc_ray.refine.records import RefineRecord
from mmc_ray.schemas import PAIR_SCHEMA
from mmc_ray.seeding import stable_unit
from mmc_ray.stages.dataset_card import write_card
from mmc_ray.store.dataset import DatasetWriter, finished_pair_ids
from mmc_ray.store.layout import SPLITS, TREES, tree_shards
from mmc_ray.store.shards import verified_shards
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.solution import parse_reasoning
from mmc_ray.workers.annotator import AnnotatorWorker, split_outcomes


def make_split_of(fractions: tuple[float, ...], seed: int) -> Callable[[str], str]:
    """problem id → split, by a stable hash, so every pair of a problem lands in the same split."""
    bounds = [sum(fractions[: i + 1]) for i in range(len(fractions))]

    def split_of(problem_id: str) -> str:
        u = stable_unit(seed, problem_id)
        return next((s for s, b in zip(SPLITS, bounds, strict=True) if u < b), SPLITS[-1])
    return split_of


def mine_tree_rows(trees: Iterable[dict[str, Any]], cfg: AnnotateConfig,
                   skip: frozenset[str] = frozenset()) -> list[PathToCritique]:
    """The paths to critique in tree rows, minus ids in `skip`, spread across (family, depth)."""
    records = []
    for tree in trees:
        problem = Problem.from_row(tree)
        for pair in mine_pairs_from_row(tree, cfg.mining, cfg.seed):
            if pair.pair_id in skip:
                continue
            divergent = pair.kind == "divergent"
            path = pair.wrong if divergent else pair.correct
            records.append(PathToCritique(
                problem, pair.pair_id, pair.kind, path.steps, path.answer, path.correct,
                divergence_depth=pair.divergence_depth,
                reference_steps=pair.correct.steps if divergent else (),
                reference_answer=pair.correct.answer if divergent else None,
                path_step_values=path.step_values))
    return balanced_sample(records, key=lambda r: (r.problem.family, r.divergence_depth), limit=None)


def pair_table(records: Iterable[PathToCritique]) -> pa.Table:
    return pa.Table.from_pylist([r.to_row() for r in records], schema=PAIR_SCHEMA)


class PairMiningStage:
    """Ray Data stage: tree rows in, pair rows out."""

    def __init__(self, cfg: AnnotateConfig, skip: frozenset[str]) -> None:
        self.cfg, self.skip = cfg, skip

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pair_table(mine_tree_rows(batch.to_pylist(), self.cfg, self.skip))


@dataclass
class AnnotateSummary:
    critiques: int = 0
    drops: int = 0
    skipped_existing: int = 0
    seconds: float = 0.0
    per_split: dict[str, int] = field(default_factory=dict)
    card: Path | None = None


def _tree_batches(trees_dir: Path, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    for path in verified_shards(tree_shards(trees_dir)):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield batch.to_pylist()


OutcomeSource = Callable[[frozenset[str], Callable[[str], str]], Iterable[pa.Table]]


def annotate_to_dir(trees_dir: str | Path, out_dir: str | Path, cfg: Config, local: bool = False,
                    progress: bool = True) -> AnnotateSummary:
    """Annotate every tree shard in `trees_dir` into the dataset folder `out_dir`."""
    trees_dir = Path(trees_dir)
    if not tree_shards(trees_dir):
        raise MissingInput(
            f"no {TREES}-*.parquet shards in {trees_dir} (run `mmc-ray search` first)")
    if cfg.annotate.method == "rule":
        _refuse_rows_without_step_programs(trees_dir)
    source = _local_outcomes if local else _ray_outcomes
    return _write_dataset(out_dir, cfg, lambda done, split_of: source(trees_dir, cfg, done, split_of),
                          progress, unit="pair")


def _refuse_rows_without_step_programs(trees_dir: Path) -> None:
    """The rule annotator needs ground-truth step programs (the synthetic tasks have them; a user's
    problems do not): refused before any work, naming the annotators that need none."""
    without = []
    for shard in verified_shards(tree_shards(trees_dir)):
        table = read_parquet(shard, columns=["problem_id", "steps"])
        ids, steps = table["problem_id"].to_pylist(), table["steps"].to_pylist()
        without += [i for i, s in zip(ids, steps, strict=True) if not s]
    if without:
        examples = ", ".join(without[:3])
        raise BadInput(f"annotate.method=rule needs ground-truth step programs, and {len(without)} "
                       f"problem(s) in {trees_dir} have none (e.g. {examples}): use annotate.method=mc "
                       f"(model-free, from the search's values) or annotate.method=llm (the `annotator` "
                       f"engine writes them)")


def annotate_refinement_to_dir(records: Iterable[RefineRecord], problems: Iterable[Problem],
                               out_dir: str | Path, cfg: Config, progress: bool = True) -> AnnotateSummary:
    """Critique every answer the actor wrote while being refined and add them to the dataset in
    `out_dir`: the critic then also learns from whole answers of the kind it judges at inference,
    revisions included. `rule` (synthetic problems) critiques each answer from the step program; `llm`
    sees each wrong answer beside a right answer the actor gave the same problem (the annotator
    prompt), and an answer without such a partner alone (the critic prompt). `mc` cannot: refinement
    answers are no search paths, so they carry no values."""
    method = cfg.annotate.method
    if method == "mc":
        raise BadInput("annotate.method=mc judges search paths by their node values; refinement "
                       "answers have none: use rule (synthetic tasks) or llm, or "
                       "pipeline.refine_train_problems=false")
    by_id = {p.problem_id: p for p in problems}
    answers: dict[str, list[tuple[RefineRecord, Any]]] = {}
    for r in records:
        if r.problem_id not in by_id:
            raise ValueError(f"refinement record of unknown problem {r.problem_id}")
        answers.setdefault(r.problem_id, []).append((r, parse_reasoning(r.text)))
    pairs = []
    for problem_id, written in answers.items():
        right = next((parsed for r, parsed in written if r.correct), None) if method == "llm" else None
        for r, parsed in written:
            partner = right if right is not None and not r.correct else None
            reference = {} if partner is None else {
                "divergence_depth": _shared_steps(parsed.steps, partner.steps),
                "reference_steps": tuple(partner.steps), "reference_answer": partner.answer}
            pairs.append(PathToCritique(by_id[problem_id], f"{problem_id}:refine:{r.round}", "refined",
                                        tuple(parsed.steps), parsed.answer, r.correct, **reference))

    def outcomes(done: frozenset[str], split_of: Callable[[str], str]) -> Iterator[pa.Table]:
        worker = AnnotatorWorker(cfg, split_of)
        todo = [p for p in pairs if p.pair_id not in done]
        for begin in range(0, len(todo), cfg.annotate.trees_per_batch):
            yield worker(pair_table(todo[begin:begin + cfg.annotate.trees_per_batch]))
    return _write_dataset(out_dir, cfg, outcomes, progress, unit="answer")


def _shared_steps(a: Sequence[str], b: Sequence[str]) -> int:
    """How many leading steps two answers share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def annotate_metrics() -> StageMetrics:
    return StageMetrics("annotate", counters=("critiques", "drops"), gauges=())


def write_outcomes(table: pa.Table, writer: DatasetWriter, metrics: StageMetrics) -> tuple[int, int]:
    """An annotator's outcome table into the dataset's writer; returns (critiques, drops)."""
    critiques, drops = split_outcomes(table)
    metrics.inc("critiques", len(critiques))
    metrics.inc("drops", len(drops))
    writer.add(critiques, drops)
    return len(critiques), len(drops)


def _write_dataset(out_dir: str | Path, cfg: Config, source: OutcomeSource, progress: bool,
                   unit: str) -> AnnotateSummary:
    """Write the outcome tables of `source` (given the ids already done and the split function)
    into the dataset folder, then refresh its card."""
    out_dir = Path(out_dir)
    acfg = cfg.annotate
    done = finished_pair_ids(out_dir)
    split_of = make_split_of(acfg.split_fractions, acfg.seed)
    writer = DatasetWriter(out_dir, acfg.shard_size)
    summary = AnnotateSummary(skipped_existing=len(done))
    start = time.perf_counter()
    bar = tqdm(desc="annotate", unit=unit, disable=not progress)
    metrics = annotate_metrics()
    try:
        for table in source(done, split_of):
            critiques, drops = write_outcomes(table, writer, metrics)
            summary.critiques += critiques
            summary.drops += drops
            bar.update(table.num_rows)
            bar.set_postfix(critiques=summary.critiques, drops=summary.drops, refresh=False)
    finally:
        bar.close()
        writer.flush()  # finished rows are kept even when the run is interrupted
    summary.per_split = writer.rows_per_split
    summary.seconds = time.perf_counter() - start
    summary.card = write_card(out_dir, cfg)
    return summary


def _local_outcomes(trees_dir: Path, cfg: Config, done: frozenset[str],
                    split_of: Callable[[str], str]) -> Iterator[pa.Table]:
    worker = AnnotatorWorker(cfg, split_of)
    for trees in _tree_batches(trees_dir, cfg.annotate.trees_per_batch):
        pairs = mine_tree_rows(trees, cfg.annotate, done)
        if pairs:
            yield worker(pair_table(pairs))


def annotate_dataset(trees: Any, cfg: Config, split_of: Callable[[str], str],
                     skip: frozenset[str] = frozenset(), light_cpus: float = 0.25) -> Any:
    """Tree rows `ray.data.Dataset` → outcome rows `Dataset`, streamed: annotation starts on the
    first trees while later ones are still being read (or searched). `light_cpus` is what the
    pure-Python stages (mining, the rule annotator) reserve."""
    res = cfg.annotator.resources
    pairs = trees.map_batches(PairMiningStage, fn_constructor_kwargs={"cfg": cfg.annotate, "skip": skip},
                              batch_size=cfg.annotate.trees_per_batch, batch_format="pyarrow",
                              compute=actor_pool(1), num_cpus=light_cpus)
    return pairs.map_batches(
        AnnotatorWorker, fn_constructor_kwargs={"cfg": cfg, "split_of": split_of},
        batch_size=cfg.annotate.trees_per_batch, batch_format="pyarrow", compute=actor_pool(res.replicas),
        num_cpus=res.num_cpus if cfg.annotate.method == "llm" else light_cpus,
        num_gpus=res.num_gpus if cfg.annotate.method == "llm" else 0,
    )


def _ray_outcomes(trees_dir: Path, cfg: Config, done: frozenset[str],
                  split_of: Callable[[str], str]) -> Iterator[pa.Table]:
    import ray.data

    from mmc_ray.ray_runtime import init_ray

    init_ray()
    trees = ray.data.read_parquet([str(p) for p in verified_shards(tree_shards(trees_dir))])
    yield from annotate_dataset(trees, cfg, split_of, done).iter_batches(batch_format="pyarrow",
                                                                          batch_size=None)
