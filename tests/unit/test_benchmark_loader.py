"""Loading local MathVista-like benchmark files; every test writes its own files and images."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmc_ray.tasks.benchmark import BenchmarkLoad, SkippedRow, infer_answer_type, load_benchmark
from mmc_ray.tasks.problem import read_problems, write_problems

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _image_bytes(color: str = "red", size: tuple[int, int] = (8, 6), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def _write_jsonl(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _assert_png(data: bytes | None, size: tuple[int, int] = (8, 6)) -> None:
    assert data is not None and data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        assert im.size == size


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "1.png").write_bytes(_image_bytes("red"))
    (folder / "2.jpg").write_bytes(_image_bytes("blue", fmt="JPEG"))
    return folder


def test_jsonl_happy_path(tmp_path: Path, images: Path) -> None:
    path = _write_jsonl(tmp_path / "mathvista_mini.jsonl", [
        {"pid": "1", "question": "How many bars?", "image": "images/1.png", "answer": "4",
         "question_type": "free_form", "answer_type": "integer"},
        {"pid": "2", "question": "Which is longest?", "image": str(images / "2.jpg"),
         "choices": ["AB", "BC", "CD"], "answer": "BC", "question_type": "multi_choice",
         "answer_type": "text"},
        {"id": 3, "question": "What is 1/4 as a decimal?", "answer": 0.25},
        {"id": "4", "question": "Color?", "image": {"bytes": None, "path": "images/1.png"},
         "answer": "red"},
    ])
    load = load_benchmark(path)
    assert isinstance(load, BenchmarkLoad)
    assert load.skipped == []
    assert [p.problem_id for p in load.problems] == [
        "mathvista_mini-1", "mathvista_mini-2", "mathvista_mini-3", "mathvista_mini-4"]
    first, second, third, fourth = load.problems
    assert (first.answer, first.answer_type) == ("4", "integer")
    assert (second.answer, second.answer_type, second.choices) == ("BC", "choice", ("AB", "BC", "CD"))
    assert (third.answer, third.answer_type, third.image) == ("0.25", "float", None)
    assert fourth.answer_type == "text"
    for p in (first, second, fourth):
        _assert_png(p.image)
    with Image.open(io.BytesIO(second.image or b"")) as im:  # the JPEG came back as PNG
        assert im.format == "PNG"
    for p in load.problems:
        assert p.family == p.source == "mathvista_mini"
        assert p.steps == ()


def test_name_and_image_root(tmp_path: Path, images: Path) -> None:
    elsewhere = tmp_path / "data"
    elsewhere.mkdir()
    path = _write_jsonl(elsewhere / "bench.jsonl", [
        {"id": "a", "question": "q", "image": "1.png", "answer": "1"},
    ])
    load = load_benchmark(path, image_root=images, name="mv")
    assert [p.problem_id for p in load.problems] == ["mv-a"]
    assert load.problems[0].family == load.problems[0].source == "mv"
    _assert_png(load.problems[0].image)


def _write_parquet(path: Path, rows: list[dict[str, Any]], image_type: pa.DataType) -> Path:
    schema = pa.schema([
        ("pid", pa.string()), ("question", pa.string()), ("image", image_type),
        ("choices", pa.list_(pa.string())), ("answer", pa.string()),
        ("question_type", pa.string()), ("answer_type", pa.string()),
    ])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _row(pid: str, image: Any, answer: str = "3", **extra: Any) -> dict[str, Any]:
    return {"pid": pid, "question": f"question {pid}", "image": image, "choices": None, "answer": answer,
            "question_type": "free_form", "answer_type": "integer", **extra}


HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.mark.parametrize(
    ("image_type", "image_value"),
    [
        (pa.binary(), _image_bytes("green")),
        (HF_IMAGE, {"bytes": _image_bytes("green"), "path": "ignored.png"}),
        (HF_IMAGE, {"bytes": None, "path": "images/1.png"}),
        (pa.string(), "images/1.png"),
    ],
    ids=["raw-bytes", "hf-dict-bytes", "hf-dict-path", "path-string"],
)
def test_parquet_image_forms(tmp_path: Path, images: Path, image_type: pa.DataType, image_value: Any) -> None:
    path = _write_parquet(tmp_path / "bench.parquet", [
        _row("1", image_value),
        _row("2", None, answer="2.5", answer_type="float"),
        _row("3", image_value, answer="AB", choices=["AB", "CD"], question_type="multi_choice",
             answer_type="text"),
    ], image_type)
    load = load_benchmark(path)
    assert load.skipped == []
    assert [p.problem_id for p in load.problems] == ["bench-1", "bench-2", "bench-3"]
    _assert_png(load.problems[0].image)
    assert load.problems[1].image is None
    assert load.problems[1].answer_type == "float"
    assert load.problems[2].answer_type == "choice"
    _assert_png(load.problems[2].image)


def test_parquet_prefers_decoded_image(tmp_path: Path) -> None:
    # HF MathVista: `image` is a relative path that does not exist here, `decoded_image` holds bytes
    table = pa.Table.from_pylist(
        [{"pid": "1", "question": "q", "image": "images/nowhere.png",
          "decoded_image": {"bytes": _image_bytes(), "path": None}, "answer": "5"}],
        schema=pa.schema([("pid", pa.string()), ("question", pa.string()), ("image", pa.string()),
                          ("decoded_image", HF_IMAGE), ("answer", pa.string())]),
    )
    pq.write_table(table, tmp_path / "hf.parquet")
    load = load_benchmark(tmp_path / "hf.parquet")
    assert load.skipped == []
    _assert_png(load.problems[0].image)


def _skips(load: BenchmarkLoad) -> dict[str, str]:
    return {s.row_id: s.reason for s in load.skipped}


def test_missing_image_is_skipped_and_logged(tmp_path: Path, images: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    path = _write_jsonl(tmp_path / "b.jsonl", [
        {"id": "ok", "question": "q", "image": "images/1.png", "answer": "1"},
        {"id": "gone", "question": "q", "image": "images/missing.png", "answer": "1"},
    ])
    with caplog.at_level(logging.WARNING, logger="mmc_ray.tasks.benchmark"):
        load = load_benchmark(path)
    assert [p.problem_id for p in load.problems] == ["b-ok"]
    assert len(load.skipped) == 1
    assert load.skipped[0].row_id == "gone"
    assert "not found" in load.skipped[0].reason and "missing.png" in load.skipped[0].reason
    assert any("gone" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_corrupt_and_truncated_images_are_skipped(tmp_path: Path, images: Path) -> None:
    png = _image_bytes("red", size=(64, 64))
    (images / "truncated.png").write_bytes(png[: len(png) // 2])
    (images / "junk.png").write_bytes(b"this is not an image at all")
    path = _write_parquet(tmp_path / "b.parquet", [
        _row("good", png),
        _row("corrupt", b"\x89PNG\r\n\x1a\n garbage after a valid signature"),
        _row("truncated", png[: len(png) // 2]),
        _row("empty", b""),
    ], pa.binary())
    load = load_benchmark(path)
    assert [p.problem_id for p in load.problems] == ["b-good"]
    assert set(_skips(load)) == {"corrupt", "truncated", "empty"}
    assert all("not a readable image" in reason for reason in _skips(load).values())

    jsonl = _write_jsonl(tmp_path / "files.jsonl", [
        {"id": "t", "question": "q", "image": "images/truncated.png", "answer": "1"},
        {"id": "j", "question": "q", "image": "images/junk.png", "answer": "1"},
    ])
    assert set(_skips(load_benchmark(jsonl))) == {"t", "j"}


def test_bad_json_lines_are_skipped(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "b.jsonl", [
        {"id": "1", "question": "q", "answer": "1"},
        '{"id": "2", "question": "q", "answer": ',
        "",
        "[1, 2, 3]",
        {"id": "5", "question": "q", "answer": "5"},
    ])
    load = load_benchmark(path)
    assert [p.problem_id for p in load.problems] == ["b-1", "b-5"]
    skips = _skips(load)
    assert set(skips) == {"line 2", "line 4"}
    assert "malformed JSON" in skips["line 2"]
    assert "not a JSON object" in skips["line 4"]


def test_invalid_utf8_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"id": "1", "question": "q", "answer": "1"}\n\xff\xfe{"x": 1}\n')
    load = load_benchmark(path)
    assert len(load.problems) == 1
    assert load.skipped == [SkippedRow(row_id="line 2", reason="line is not valid UTF-8")]


def test_missing_fields_are_skipped(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "b.jsonl", [
        {"id": "no-answer", "question": "q"},
        {"id": "null-answer", "question": "q", "answer": None},
        {"id": "blank-answer", "question": "q", "answer": "  "},
        {"id": "no-question", "answer": "1"},
        {"question": "q without id", "answer": "1"},
        {"id": "list-answer", "question": "q", "answer": [1, 2]},
    ])
    load = load_benchmark(path)
    skips = _skips(load)
    assert skips == {
        "no-answer": "missing answer",
        "null-answer": "missing answer",
        "blank-answer": "missing answer",
        "no-question": "missing question",
        "list-answer": "answer must be text or a number, got list",
    }
    assert [p.problem_id for p in load.problems] == ["b-line 5"]  # no id: the line number stands in


def test_choice_mapping_and_validation(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "b.jsonl", [
        {"id": "mc", "question": "q", "choices": ["3", "4"], "answer": "4", "question_type": "multi_choice",
         "answer_type": "integer"},
        {"id": "implicit", "question": "q", "choices": ["red", "blue"], "answer": "blue"},
        {"id": "letter", "question": "q", "choices": ["red", "blue"], "answer": "B"},
        {"id": "wrong", "question": "q", "choices": ["red", "blue"], "answer": "green"},
        {"id": "letter-out-of-range", "question": "q", "choices": ["red", "blue"], "answer": "C"},
        {"id": "no-choices", "question": "q", "answer": "x", "question_type": "multi_choice"},
        {"id": "bad-choices", "question": "q", "choices": "red, blue", "answer": "red"},
        {"id": "null-choices", "question": "q", "choices": None, "answer": "7"},
        {"id": "free-with-choices", "question": "q", "choices": ["1", "2"], "answer": "2",
         "question_type": "free_form"},
    ])
    load = load_benchmark(path)
    got = {p.problem_id.removeprefix("b-"): (p.answer_type, p.answer) for p in load.problems}
    assert got == {
        "mc": ("choice", "4"),
        "implicit": ("choice", "blue"),
        "letter": ("choice", "blue"),
        "null-choices": ("integer", "7"),
        "free-with-choices": ("integer", "2"),
    }
    skips = _skips(load)
    assert set(skips) == {"wrong", "letter-out-of-range", "no-choices", "bad-choices"}
    assert "not among choices" in skips["wrong"]
    assert "without choices" in skips["no-choices"]
    assert "choices must be a list" in skips["bad-choices"]


def test_answer_type_inference_and_declared_types(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "b.jsonl", [
        {"id": "int", "question": "q", "answer": "12"},
        {"id": "neg", "question": "q", "answer": "-3"},
        {"id": "json-int", "question": "q", "answer": 7},
        {"id": "float", "question": "q", "answer": "1.5"},
        {"id": "text", "question": "q", "answer": "March"},
        {"id": "declared", "question": "q", "answer": "12", "answer_type": "float"},
        {"id": "list", "question": "q", "answer": "[1, 2]", "answer_type": "list"},
        {"id": "weird", "question": "q", "answer": "1", "answer_type": "matrix"},
    ])
    load = load_benchmark(path)
    got = {p.problem_id.removeprefix("b-"): p.answer_type for p in load.problems}
    assert got == {"int": "integer", "neg": "integer", "json-int": "integer", "float": "float",
                   "text": "text", "declared": "float", "list": "text"}
    assert _skips(load) == {"weird": "unsupported answer_type 'matrix'"}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("12", "integer"), ("-3", "integer"), ("+4", "integer"), ("1,234", "integer"), ("1.5", "float"),
     ("-0.25", "float"), (".5", "float"), ("1e-3", "float"), ("3/4", "text"), ("12 cm", "text"),
     ("1.2.3", "text"), ("yes", "text")],
)
def test_infer_answer_type(answer: str, expected: str) -> None:
    assert infer_answer_type(answer) == expected


def test_duplicate_ids_are_skipped(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "b.jsonl", [
        {"id": "1", "question": "q", "answer": "1"},
        {"id": "1", "question": "q again", "answer": "2"},
    ])
    load = load_benchmark(path)
    assert [p.answer for p in load.problems] == ["1"]
    assert load.skipped == [SkippedRow(row_id="1", reason="duplicate id")]


def test_loaded_problems_round_trip_through_parquet(tmp_path: Path, images: Path) -> None:
    path = _write_jsonl(tmp_path / "b.jsonl", [
        {"id": "1", "question": "q", "image": "images/1.png", "answer": "1"},
        {"id": "2", "question": "q", "choices": ["x", "y"], "answer": "y"},
    ])
    problems = load_benchmark(path).problems
    write_problems(problems, tmp_path / "out.parquet")
    assert read_problems(tmp_path / "out.parquet") == problems


def test_nonexistent_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_benchmark(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError):
        load_benchmark(tmp_path)  # a folder is not a benchmark file


def test_unsupported_extension_raises(tmp_path: Path) -> None:
    path = tmp_path / "bench.csv"
    path.write_text("id,question,answer\n1,q,1\n")
    with pytest.raises(ValueError, match=r"\.csv|unsupported"):
        load_benchmark(path)
