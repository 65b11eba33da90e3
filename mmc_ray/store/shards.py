"""Output folders of Parquet shards: written atomically, checksummed, verified, resumable by id.

A shard `<prefix>-NNNNN.parquet` is written to a hidden temporary file and renamed, so a reader (or
a rerun) only ever sees complete shards; records of a crashed run that were not flushed are redone.
Each shard has page checksums and a manifest `_<prefix>-NNNNN.manifest.json` (rows, bytes, SHA-256
of the file, the ids it holds). The manifest is written before the shard is renamed in, so a reader
that sees a shard (a streamed round tails a growing folder) always finds its manifest.

Readers verify before they read (`verified_shards`): a shard whose bytes do not match its manifest
is an error naming the file. Resume (`finished_ids`) sets such a shard aside as
`<name>.unverified` and redoes its ids. A shard without a manifest (interrupted between the two
writes, or written before manifests) is checked as far as the file itself allows: fully read with
its page checksums.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmc_ray.errors import BadInput
from mmc_ray.io import unreadable_reason, write_atomic, write_parquet, write_text_atomic

MANIFEST_SUFFIX = ".manifest.json"
SET_ASIDE_SUFFIX = ".unverified"
log = logging.getLogger(__name__)


def shard_paths(out_dir: str | Path, prefix: str) -> list[Path]:
    return sorted(Path(out_dir).glob(f"{prefix}-[0-9]*.parquet"))


def manifest_path(shard: Path) -> Path:
    """`_<name>.manifest.json`: the leading underscore keeps it out of Parquet readers that take the
    whole folder (pyarrow and Ray Data skip `_` and `.` files)."""
    return shard.with_name(f"_{shard.stem}{MANIFEST_SUFFIX}")


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(shard: Path) -> dict[str, Any] | None:
    try:
        return json.loads(manifest_path(shard).read_text())
    except FileNotFoundError:
        return None


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


# Shards this process has verified, by path and the size and mtime of the shard and its manifest:
# a folder read again (a growing folder polled, a report after a stage) is not hashed again. Only
# shards last changed a while before they were verified are remembered: file times are coarse (a
# few ms), so a file damaged right after it was verified could keep its mtime (git's "racy clean").
_verified: dict[Path, tuple] = {}
_SETTLED_S = 2.0


def shard_problem(shard: Path) -> str | None:
    """Why `shard` cannot be trusted, or None when it verifies."""
    state = (_file_state(shard), _file_state(manifest_path(shard)))
    if state[0] is not None and _verified.get(shard.resolve()) == state:
        return None
    why = _shard_problem(shard)
    if why is None and state[0] is not None and time.time_ns() - state[0][1] > _SETTLED_S * 1e9:
        _verified[shard.resolve()] = state
    return why


def _shard_problem(shard: Path) -> str | None:
    try:
        manifest = _manifest(shard)
    except (OSError, ValueError) as e:
        return f"its manifest is unreadable ({type(e).__name__}: {e})"
    if manifest is None:
        try:
            pq.read_table(shard, page_checksum_verification=True)
        except (pa.ArrowException, OSError) as e:
            return unreadable_reason(e)
        return None
    size = shard.stat().st_size
    if size != manifest.get("bytes"):
        return f"{size} bytes where its manifest says {manifest.get('bytes')} (truncated or rewritten)"
    if file_sha256(shard) != manifest.get("sha256"):
        return "its content does not match its manifest's SHA-256 (the file was damaged after it was written)"
    return None


def verified_shards(paths: Iterable[Path]) -> list[Path]:
    """`paths`, each verified; the first that fails is an error naming it."""
    paths = list(paths)
    for path in paths:
        if why := shard_problem(path):
            raise BadInput(f"{path}: {why}. Rerun the command that wrote it: its resume sets the shard "
                           f"aside and redoes its rows")
    return paths


def finished_ids(out_dir: str | Path, prefix: str, key: str) -> set[str]:
    """Ids already written to `out_dir`, from the shards that verify (from their manifests; the id
    column of a shard without one). A shard that does not verify is set aside and its ids redone."""
    ids: set[str] = set()
    for path in shard_paths(out_dir, prefix):
        if why := shard_problem(path):
            aside = path.with_name(path.name + SET_ASIDE_SUFFIX)
            path.replace(aside)
            manifest_path(path).unlink(missing_ok=True)
            log.warning("%s: %s; set aside as %s, its rows are redone", path, why, aside.name)
            continue
        manifest = _manifest(path)
        if manifest is not None and manifest.get("key") == key:
            ids.update(manifest["ids"])
        else:
            ids.update(pq.read_table(path, columns=[key]).column(key).to_pylist())
    return ids


def write_shard(rows: list[dict[str, Any]], schema: pa.Schema, path: Path, key: str | None = None) -> Path:
    """One shard and its manifest (`key`: the id column the manifest lists), atomically."""
    table = pa.Table.from_pylist(rows, schema=schema)

    def write(tmp: Path) -> None:
        write_parquet(table, tmp)
        manifest = {"rows": table.num_rows, "bytes": tmp.stat().st_size, "sha256": file_sha256(tmp),
                    "key": key, "ids": table.column(key).to_pylist() if key else None}
        write_text_atomic(json.dumps(manifest), manifest_path(path))  # before the shard: see the docstring

    return write_atomic(path, write)


class ShardWriter:
    """Buffers rows and writes `<prefix>-NNNNN.parquet` every `shard_size` rows (and on flush);
    `key` names the id column each shard's manifest lists (what resume reads)."""

    def __init__(self, out_dir: str | Path, prefix: str, schema: pa.Schema, shard_size: int,
                 key: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.schema = schema
        self.shard_size = shard_size
        self.key = key
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
        write_shard(self._buffer, self.schema, path, self.key)
        self.rows_written += len(self._buffer)
        self._next_index += 1
        self._buffer = []
        return path
