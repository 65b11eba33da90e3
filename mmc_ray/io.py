"""File output that never leaves a half-written file a reader could take as complete."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet_atomic(rows: Sequence[dict[str, Any]], schema: pa.Schema, path: str | Path) -> Path:
    """Write rows to `path` via a hidden temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), tmp)
    tmp.replace(path)
    return path
