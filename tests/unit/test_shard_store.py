"""Checksummed, verified shards: every shard has a manifest; a damaged one is an error naming it for
readers, and resume sets it aside and redoes its ids (#22's corruption findings)."""

import io
import json
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmc_ray.config import Config, SearchConfig, SimulatorConfig
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.errors import BadInput
from mmc_ray.models.loading import decode_image
from mmc_ray.stages.annotate import annotate_to_dir
from mmc_ray.stages.search import search_to_dir
from mmc_ray.store.layout import split_shards, tree_shards
from mmc_ray.store.shards import finished_ids, manifest_path, shard_problem, verified_shards
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.workers.dispatch import LocalDispatcher

SEARCH = SearchConfig(num_simulations=4, expansion_width=2, rollouts_per_node=2, shard_size=4)
PROBLEMS = list(generate_problems(12, seed=5))


def search(out):
    return search_to_dir(PROBLEMS, LocalDispatcher(SimulatedActorEngine(SimulatorConfig())), SEARCH, out,
                         progress=False)


def zero_middle(path, count=4000):
    data = bytearray(path.read_bytes())
    start = len(data) // 2 - count // 2
    data[start:start + count] = bytes(count)
    path.write_bytes(bytes(data))


@pytest.fixture
def trees(tmp_path):
    out = tmp_path / "trees"
    search(out)
    return out


def test_every_shard_has_a_manifest_with_its_ids_and_hash(trees):
    shards = tree_shards(trees)
    assert len(shards) == 3
    for shard in shards:
        manifest = json.loads(manifest_path(shard).read_text())
        ids = pq.read_table(shard, columns=["problem_id"]).column("problem_id").to_pylist()
        assert manifest["ids"] == ids and manifest["rows"] == 4 and manifest["bytes"] == shard.stat().st_size
        assert pq.ParquetFile(shard).metadata.row_group(0).num_rows == 4 and shard_problem(shard) is None
    assert finished_ids(trees, "trees", "problem_id") == {p.problem_id for p in PROBLEMS}


@pytest.mark.parametrize("damage", ["zeroed", "truncated"])
def test_a_damaged_shard_is_an_error_naming_it_for_readers(trees, tmp_path, damage):
    shard = tree_shards(trees)[1]
    if damage == "zeroed":
        zero_middle(shard)
    else:
        shard.write_bytes(shard.read_bytes()[:-100])
    reason = "does not match its manifest's SHA-256" if damage == "zeroed" else "where its manifest says"
    with pytest.raises(BadInput, match=rf"{shard}: .*{reason}"):
        verified_shards(tree_shards(trees))
    out = tmp_path / "dataset"
    with pytest.raises(BadInput, match=str(shard)):  # annotate --local: before it writes anything
        annotate_to_dir(trees, out, Config(), local=True, progress=False)
    assert not split_shards(out, "train")


def test_resume_sets_a_damaged_shard_aside_and_redoes_its_trees(trees):
    shard = tree_shards(trees)[0]
    lost = set(json.loads(manifest_path(shard).read_text())["ids"])
    zero_middle(shard)
    summary = search(trees)
    assert (summary.trees, summary.resumed) == (len(lost), len(PROBLEMS) - len(lost))
    assert shard.with_name(shard.name + ".unverified").exists()
    assert verified_shards(tree_shards(trees)) == tree_shards(trees)
    ids = [i for s in tree_shards(trees) for i in pq.read_table(s, columns=["problem_id"])["problem_id"].to_pylist()]
    assert sorted(ids) == sorted(p.problem_id for p in PROBLEMS)  # each once


def test_a_shard_without_a_manifest_is_checked_by_its_page_checksums(trees):
    shard = tree_shards(trees)[2]
    manifest_path(shard).unlink()  # as after a crash between the two writes
    assert shard_problem(shard) is None
    zero_middle(shard, count=2000)
    assert "not a readable Parquet file" in shard_problem(shard)


def test_damaged_png_pixel_data_is_refused_when_examples_are_built():
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    idat = png.index(b"IDAT") + 8
    png[idat + 100: idat + 140] = bytes(40)  # decodes to wrong pixels; only the chunk CRC tells
    with pytest.raises(ValueError, match="could not be decoded"):
        decode_image(bytes(png))
    assert decode_image(buf.getvalue()).size == (64, 64)


def test_a_damaged_dataset_shard_stops_training_naming_it_before_ray_starts(trees, tmp_path, ray_starts):
    from mmc_ray.train.trainer import train

    out = tmp_path / "dataset"
    annotate_to_dir(trees, out, Config(), local=True, progress=False)
    shard = split_shards(out, "train")[0]
    zero_middle(shard, count=500)
    with pytest.raises(BadInput, match=str(shard)):
        train(Config(), out, tmp_path / "critic")
    assert ray_starts == []


def test_a_settled_verified_shard_is_not_hashed_again_until_it_changes(trees, monkeypatch):
    from mmc_ray.store import shards

    shard = tree_shards(trees)[0]
    real_sha256 = shards.file_sha256
    settled = shard.stat().st_mtime_ns - 10**10  # as if written ten seconds ago
    os.utime(shard, ns=(settled, settled))
    hashed = []
    monkeypatch.setattr(shards, "file_sha256", lambda path: hashed.append(path) or real_sha256(path))
    assert shard_problem(shard) is None and shard_problem(shard) is None
    assert hashed == [shard]  # the second read trusted the first
    zero_middle(shard)  # a new mtime: verified again, and refused
    assert "SHA-256" in shard_problem(shard) and hashed == [shard, shard]
