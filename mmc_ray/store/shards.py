"""Output folders of Parquet shards, written atomically and resumable by record id.

A shard is written to a hidden temporary file and renamed, so a reader (or a rerun) only ever sees
complete shards; records of a crashed run that were not flushed are simply redone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmc_ray.io import write_parquet_atomic


def shard_paths(out_dir: str | Path, prefix: str) -> list[Path]:
    return sorted(Path(out_dir).glob(f"{prefix}-[0-9]*.parquet"))


def finished_ids(out_dir: str | Path, prefix: str, key: str) -> set[str]:
    """Ids already written to `out_dir` (reads only the id column)."""
    ids: set[str] = set()
    for path in shard_paths(out_dir, prefix):
        ids.update(pq.read_table(path, columns=[key]).column(key).to_pylist())
    return ids


class ShardWriter:
    """Buffers rows and writes `<prefix>-NNNNN.parquet` every `shard_size` rows (and on flush)."""

    def __init__(self, out_dir: str | Path, prefix: str, schema: pa.Schema, shard_size: int) -> None:
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.schema = schema
        self.shard_size = shard_size
        self.rows_written = 0
        self._buffer: list[dict[str, Any]] = []
        pattern = re.compile(rf"{re.escape(prefix)}-(\d+)\.parquet$")
        existing = [int(m.group(1)) for p in shard_paths(out_dir, prefix) if (m := pattern.search(p.name))]
        self._next_index = max(existing, default=-1) + 1

    def add(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> Path | None:
        if not self._buffer:
            return None
        path = self.out_dir / f"{self.prefix}-{self._next_index:05d}.parquet"
        write_parquet_atomic(self._buffer, self.schema, path)
        self.rows_written += len(self._buffer)
        self._next_index += 1
        self._buffer = []
        return path
