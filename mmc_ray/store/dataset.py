"""A dataset folder's rows: critiques by split under data/, drops (pairs that got no critique, with
the reason) under drops/, and which pair ids are done (critiqued or dropped) for resume."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmc_ray.schemas import CRITIQUE_SCHEMA, DROP_SCHEMA
from mmc_ray.store.layout import DROPS, SPLITS, data_dir, drops_dir
from mmc_ray.store.shards import ShardWriter, finished_ids


class DatasetWriter:
    """Buffers critique rows (each into its `split`) and drop rows; writes them in atomic shards."""

    def __init__(self, dataset_dir: str | Path, shard_size: int) -> None:
        self.splits = {s: ShardWriter(data_dir(dataset_dir), s, CRITIQUE_SCHEMA, shard_size, key="pair_id")
                       for s in SPLITS}
        self.drops = ShardWriter(drops_dir(dataset_dir), DROPS, DROP_SCHEMA, shard_size, key="pair_id")

    def add(self, critiques: Iterable[dict[str, Any]], drops: Iterable[dict[str, Any]]) -> None:
        for row in critiques:
            self.splits[row["split"]].add(row)
        for row in drops:
            self.drops.add(row)

    def flush(self) -> None:
        for writer in (*self.splits.values(), self.drops):
            writer.flush()

    @property
    def rows_per_split(self) -> dict[str, int]:
        return {s: w.rows_written for s, w in self.splits.items()}


def finished_pair_ids(dataset_dir: str | Path) -> frozenset[str]:
    """Pairs of a dataset folder that are done: critiqued (any split) or dropped."""
    return frozenset(set().union(*(finished_ids(data_dir(dataset_dir), s, "pair_id") for s in SPLITS),
                                 finished_ids(drops_dir(dataset_dir), DROPS, "pair_id")))
