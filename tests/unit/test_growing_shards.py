"""Tailing a shard folder that is still being written (pure file logic, no Ray)."""

import threading
import time

import pyarrow as pa
import pytest

from mmc_ray.store.growing import UpstreamFailed, mark_done, tail_shards
from mmc_ray.store.shards import ShardWriter

SCHEMA = pa.schema([("id", pa.string())])


def write_later(folder, done, batches, error=None):
    writer = ShardWriter(folder, "train", SCHEMA, shard_size=100)
    for batch in batches:
        time.sleep(0.05)
        for i in batch:
            writer.add({"id": i})
        writer.flush()
    mark_done(done, error)


def test_tail_yields_existing_then_new_shards_once_until_done(tmp_path):
    write_later(tmp_path, tmp_path / "unused", [["a"]])  # a shard from before the tail starts
    done = tmp_path / "done.json"
    writer = threading.Thread(target=write_later, args=(tmp_path, done, [["b"], ["c", "d"], ["e"]]))
    writer.start()
    seen = [p.name for p in tail_shards(tmp_path, "train", done, poll_seconds=0.01)]
    writer.join()
    assert seen == [f"train-{i:05d}.parquet" for i in range(4)]


def test_tail_raises_when_the_writer_failed(tmp_path):
    done = tmp_path / "done.json"
    write_later(tmp_path, done, [["a"]], error="ValueError: boom")
    paths = tail_shards(tmp_path, "train", done, poll_seconds=0.01)
    assert next(paths).name == "train-00000.parquet"  # what was written before the failure comes first
    with pytest.raises(UpstreamFailed, match="boom"):
        next(paths)


def test_temporary_files_are_not_shards(tmp_path):
    (tmp_path / ".train-00000.parquet.tmp").write_bytes(b"half")
    mark_done(tmp_path / "done.json")
    assert list(tail_shards(tmp_path, "train", tmp_path / "done.json")) == []
