"""File output that never leaves a half-written file a reader could take as complete, and Parquet
input that names the file when it cannot be read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmc_ray.errors import BadInput


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write` into a hidden temporary file in the same folder as `path`, then rename it there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)
    return path


def write_parquet(table: pa.Table, path: Path) -> None:
    """Parquet with page checksums, which every reader here verifies."""
    pq.write_table(table, path, write_page_checksum=True)


def write_parquet_atomic(rows: Sequence[dict[str, Any]], schema: pa.Schema, path: str | Path) -> Path:
    """Write rows to `path` atomically."""
    table = pa.Table.from_pylist(list(rows), schema=schema)
    return write_atomic(path, lambda tmp: write_parquet(table, tmp))


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write text to `path` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def unreadable_reason(error: BaseException) -> str:
    """Why a Parquet file could not be read, from the error reading it raised."""
    return f"not a readable Parquet file ({type(error).__name__}: {error})"


def unreadable(path: str | Path, error: BaseException) -> BadInput:
    """The error for a Parquet file that cannot be read (truncated, corrupted, not Parquet), naming it."""
    return BadInput(f"{path}: {unreadable_reason(error)}")


def read_parquet(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a Parquet file, verifying the page checksums of files that have them."""
    try:
        return pq.read_table(path, columns=columns, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as e:
        raise unreadable(path, e) from None


def read_parquet_schema(path: str | Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise unreadable(path, e) from None
