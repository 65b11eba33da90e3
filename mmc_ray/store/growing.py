"""A Ray Data source over a shard folder that is still being written.

A streamed round runs its upstream (search → annotate → dataset folder) from the driver the moment
it starts, and the trainer reads the dataset folder as it grows: every complete
`<prefix>-NNNNN.parquet` already there, then each new one as its writer renames it in, until the
writer's done file appears. Shards are only ever renamed in whole (`ShardWriter`), so a shard seen
is a shard complete. The done file says whether the upstream finished or failed; a failure is raised
in the reading task, which fails the training run instead of leaving it waiting.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmc_ray.io import write_text_atomic
from mmc_ray.store.shards import shard_paths, verified_shards

POLL_SECONDS = 0.5
TAIL_CPUS = 0.05  # the reading task mostly waits for the next shard


class UpstreamFailed(RuntimeError):
    """The writer of a growing shard folder stopped with an error."""


def mark_done(done_file: str | Path, error: str | None = None) -> None:
    """Tell readers that no shard follows (`error`: the upstream failed, and why)."""
    write_text_atomic(json.dumps({"error": error}), done_file)


def tail_shards(folder: str | Path, prefix: str, done_file: str | Path,
                poll_seconds: float = POLL_SECONDS) -> Iterator[Path]:
    """Each shard of `folder` once, in name order as they appear, until `done_file` exists."""
    seen: set[Path] = set()
    done_file = Path(done_file)
    while True:
        # Done is read before listing: every shard written before the done file is then listed.
        done = done_file.exists()
        for path in shard_paths(folder, prefix):
            if path not in seen:
                seen.add(path)
                yield path
        if done:
            error = json.loads(done_file.read_text())["error"]
            if error is not None:
                raise UpstreamFailed(f"the upstream writing {folder} failed: {error}")
            return
        time.sleep(poll_seconds)


def read_growing_shards(folder: str | Path, prefix: str, done_file: str | Path, schema: pa.Schema) -> Any:
    """A `ray.data.Dataset` of the shard folder's rows, streamed as shards appear (one read task)."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    folder, done_file = str(folder), str(done_file)

    def read() -> Iterator[pa.Table]:
        for path in tail_shards(folder, prefix, done_file):
            (path,) = verified_shards([path])
            yield pq.read_table(path, schema=schema)

    class GrowingShards(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None  # still being written

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            unknown = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
            return [ReadTask(read, unknown, schema=schema)]

    return ray.data.read_datasource(GrowingShards(), num_cpus=TAIL_CPUS, override_num_blocks=1)
