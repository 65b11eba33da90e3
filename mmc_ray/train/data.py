"""A Ray Train worker's data: its dataset shard's tables, read in the background from the start, and
the endless stream of micro-batches built from them (the step recipe's packing, `train/step.py`)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from mmc_ray.background import BackgroundTask
from mmc_ray.config import TrainConfig
from mmc_ray.train.step import Batch, packed_batches


class ShardTables:
    """The Arrow tables of a worker's dataset shard, read by a background thread from the moment
    this is made, and kept for later epochs.

    Reading starts before the model loads, so a streamed upstream (search, annotation) runs
    meanwhile instead of waiting for the first training step to ask. The tables are replayed for
    later epochs: Ray Data's split shards advance epochs in step across workers, and workers here
    finish epochs at different times."""

    def __init__(self, shard: Any, rows_per_table: int = 64) -> None:
        self._tables: list[Any] = []
        self._done = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        # A read error is raised to the training loop when it gets there.
        self._reader = BackgroundTask("shard-reader", lambda: self._read(shard, rows_per_table),
                                      on_exit=self._finished)

    def _read(self, shard: Any, rows_per_table: int) -> None:
        # Blocks as they come (a streamed upstream sends a few rows at a time), cut to size.
        for block in shard.iter_batches(batch_size=None, batch_format="pyarrow"):
            for start in range(0, block.num_rows, rows_per_table):
                with self._changed:
                    self._tables.append(block.slice(start, rows_per_table))
                    self._changed.notify_all()

    def _finished(self, error: BaseException | None) -> None:
        with self._changed:
            self._error, self._done = error, True
            self._changed.notify_all()

    def __iter__(self) -> Iterator[Any]:
        """One epoch: every table, waiting for those still being read."""
        index = 0
        while True:
            with self._changed:
                self._changed.wait_for(lambda i=index: i < len(self._tables) or self._done)
                if index == len(self._tables):
                    if self._error is not None:
                        raise self._error
                    return
                table = self._tables[index]
            yield table
            index += 1


def micro_batches(tables: Iterable[Any], builder: Any, cfg: TrainConfig, model: Any,
                  image_token_id: int, pad_token_id: int, rank: int = 0) -> Iterator[Batch]:
    """Endless (epoch after epoch over `tables`) stream of (model inputs, real tokens, samples)
    under the token budget, grouped across tables, so the few rows at a time of a streamed upstream
    still make full steps. Packs are drawn in a shuffled order seeded by (`cfg.seed`, `rank`): the
    same stream on a resume, different packs each epoch."""
    rng = random.Random(f"{cfg.seed}:{rank}")
    while True:
        produced = False
        groups = (builder.build_all(table.to_pylist(), cfg.task) for table in tables)
        for batch in packed_batches(groups, cfg, model, image_token_id, pad_token_id, rng):
            produced = True
            yield batch
        if not produced:
            raise RuntimeError(
                f"no trainable examples in this worker's share of the data (skips: {builder.stats.skipped}): "
                "every row was skipped, or the data has fewer rows than train.num_workers")
