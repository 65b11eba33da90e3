"""File output that never leaves a half-written file a reader could take as complete."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write` into a hidden temporary file in the same folder as `path`, then rename it there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)
    return path


def write_parquet_atomic(rows: Sequence[dict[str, Any]], schema: pa.Schema, path: str | Path) -> Path:
    """Write rows to `path` atomically."""
    table = pa.Table.from_pylist(list(rows), schema=schema)
    return _write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write text to `path` atomically."""
    return _write_atomic(path, lambda tmp: tmp.write_text(text))
