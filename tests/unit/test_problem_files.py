"""Our own problems files: a bad row is a counted skip naming it, repeated ids are an error naming
them (or dropped and counted), and a file that is not readable Parquet is an error naming the file."""

import dataclasses
import logging

import pytest

from mmc_ray.errors import BadInput
from mmc_ray.tasks.benchmark import load_problem_file
from mmc_ray.tasks.problem import read_problems, write_problems
from mmc_ray.tasks.synthetic import generate_problems


@pytest.fixture
def problems():
    return list(generate_problems(4, seed=3))


def test_bad_rows_are_skipped_counted_and_named(tmp_path, problems, caplog):
    broken_image = dataclasses.replace(problems[1], image=problems[1].image[:200])  # a truncated PNG
    path = tmp_path / "p.parquet"
    write_problems([problems[0], broken_image, *problems[2:]], path)
    with caplog.at_level(logging.WARNING, logger="mmc_ray.tasks.problem"):
        loaded = read_problems(path)
    assert [p.problem_id for p in loaded] == [problems[0].problem_id, problems[2].problem_id, problems[3].problem_id]
    warned = [r.getMessage() for r in caplog.records]
    assert any(problems[1].problem_id in m and "image does not decode" in m for m in warned)
    assert any("loaded 3 problems, skipped 1 rows" in m for m in warned)


def test_a_row_with_an_unknown_answer_type_is_a_counted_skip(tmp_path, problems, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmc_ray.schemas import PROBLEM_SCHEMA

    rows = [p.to_row() for p in problems]
    rows[2]["answer_type"] = "roman numeral"
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PROBLEM_SCHEMA), path)
    with caplog.at_level(logging.WARNING, logger="mmc_ray.tasks.problem"):
        assert len(read_problems(path)) == 3
    assert any(problems[2].problem_id in r.getMessage() and "roman numeral" in r.getMessage() for r in caplog.records)


def test_repeated_ids_are_an_error_naming_them_or_dropped_with_the_flag(tmp_path, problems):
    path = tmp_path / "p.parquet"
    write_problems([*problems, problems[0], problems[2]], path)
    with pytest.raises(BadInput, match=rf"2 problem ids appear more than once \({problems[0].problem_id}, "
                                       rf"{problems[2].problem_id}\)"):
        load_problem_file(path)
    assert load_problem_file(path, duplicate_ids="drop") == problems


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_an_unreadable_file_is_an_error_naming_it(tmp_path, problems, damage):
    path = tmp_path / "p.parquet"
    write_problems(problems, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    for load in (read_problems, load_problem_file):
        with pytest.raises(BadInput, match=rf"{path}: not a readable Parquet file"):
            load(path)
