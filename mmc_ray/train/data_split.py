"""How a fit's dataset is dealt to its Ray Train workers: every row to some worker, shares even.

Ray Train's own split (`DataConfig`) gives each worker the same number of rows and drops the
remainder: up to num_workers - 1 rows, for the whole fit (a worker replays its share every epoch,
`train/data.py`), and a dataset with fewer rows than workers leaves every worker none. Here blocks of
at most `SPLIT_ROWS` rows go to the worker with the fewest rows so far (`streaming_split(equal=False)`),
so no row is dropped and the shares differ by at most one block.
"""

from __future__ import annotations

from typing import Any

from ray.train import DataConfig

SPLIT_ROWS = 8


def small_blocks(dataset: Any) -> Any:
    """`dataset` cut into blocks of at most `SPLIT_ROWS` rows, as it streams (a map's outputs would
    be merged back into big blocks)."""
    return dataset.repartition(target_num_rows_per_block=SPLIT_ROWS)


class EveryRowSplit(DataConfig):
    """`DataConfig` whose split keeps every row (see the module docstring)."""

    def configure(self, datasets: dict[str, Any], world_size: int, worker_handles: Any, worker_node_ids: Any,
                  **kwargs: Any) -> list[dict[str, Any]]:
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, dataset in datasets.items():
            if dataset.name is None:
                dataset.set_name(name)
            dataset = dataset.copy(dataset)
            dataset.context.execution_options = self._resolve_execution_options(name)
            for i, split in enumerate(dataset.streaming_split(world_size, equal=False, locality_hints=hints)):
                output[i][name] = split
        return output
