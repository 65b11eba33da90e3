"""Loading local MathVista- and MathVerse-style benchmark files; every test writes its own files and
images."""

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

from mmc_ray.errors import BadInput
from mmc_ray.tasks.benchmark import (
    VISION_ONLY_QUESTION,
    BenchmarkLoad,
    SkippedRow,
    detect_format,
    infer_answer_type,
    load_benchmark,
    load_problem_file,
)
from mmc_ray.tasks.problem import read_problems, write_problems
from mmc_ray.tasks.scoring import answers_match

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


def test_duplicate_ids_are_an_error_naming_them_or_dropped_and_counted(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "b.jsonl", [
        {"id": "1", "question": "q", "answer": "1"},
        {"id": "1", "question": "q again", "answer": "2"},
    ])
    with pytest.raises(BadInput, match=r"b.jsonl: 1 problem ids appear more than once \(b-1\).*duplicate_ids=drop"):
        load_benchmark(path)
    load = load_benchmark(path, duplicate_ids="drop")
    assert [p.answer for p in load.problems] == ["1"]
    assert load.skipped == [SkippedRow(row_id="b-1", reason="duplicate id (the first copy is kept)")]


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
    with pytest.raises(BadInput, match=r"not a `datasets\.save_to_disk` one"):
        load_benchmark(tmp_path)  # a folder that is no saved dataset


def test_unsupported_extension_raises(tmp_path: Path) -> None:
    path = tmp_path / "bench.csv"
    path.write_text("id,question,answer\n1,q,1\n")
    with pytest.raises(ValueError, match=r"\.csv|unsupported"):
        load_benchmark(path)


# --- MathVerse (testmini release format) ---

MV_QUESTION = "As shown in the figure, AB is parallel to CD. Find angle 2.\nChoices:\nA:30°\nB:60°\nC:90°\nD:120°"


def _mv_row(sample_index: str, version: str = "Text Dominant", question: str = MV_QUESTION, answer: str = "B",
            question_type: str = "multi-choice", image: str = "images_version_1-4/image_1.png",
            **extra: Any) -> dict[str, Any]:
    """A row shaped like MathVerse's testmini.json, every field present."""
    return {
        "sample_index": sample_index, "problem_index": "1", "problem_version": version, "question": question,
        "image": image, "answer": answer, "question_type": question_type,
        "metadata": {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"},
        "query_wo": f"Please directly answer the question.\nQuestion: {question}",
        "query_cot": f"Please first conduct reasoning.\nQuestion: {question}",
        "question_for_eval": question, **extra,
    }


@pytest.fixture
def mv_images(tmp_path: Path) -> Path:
    """MathVerse's image folders, next to where the tests write the benchmark files."""
    for folder, color in (("images_version_1-4", "red"), ("images_version_6", "blue")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "image_1.png").write_bytes(_image_bytes(color))
    return tmp_path


MV_ROWS = [
    _mv_row("1"),
    _mv_row("2", version="Text Lite", question="Find angle 2.\nChoice:\nA.30°\nB.60°\nC.90°", answer="C"),
    _mv_row("3", version="Vision Intensive", question="Find x.\nChoices:\n(A) 1\n(B) 2\n(C) 3\n(D) 4", answer="A"),
    _mv_row("4", version="Vision Dominant", question="How many triangles are there?", answer="3",
            question_type="free-form"),
    _mv_row("5", version="Vision Dominant", question="Find the length of AB.", answer="2\\sqrt{3}",
            question_type="free-form"),
    _mv_row("6", version="Text Only", image="", answer="D"),
    # Vision Only: the whole question is drawn in the image; only question_for_eval has its text.
    {**_mv_row("7", version="Vision Only", question="", image="images_version_6/image_1.png", answer="A"),
     "question_for_eval": MV_QUESTION},
]


def _check_mv_load(load: BenchmarkLoad) -> None:
    assert load.skipped == []
    by_id = {p.problem_id: p for p in load.problems}
    assert list(by_id) == [f"testmini-{i}" for i in range(1, 8)]
    assert {pid: p.family for pid, p in by_id.items()} == {
        "testmini-1": "Text Dominant", "testmini-2": "Text Lite", "testmini-3": "Vision Intensive",
        "testmini-4": "Vision Dominant", "testmini-5": "Vision Dominant", "testmini-6": "Text Only",
        "testmini-7": "Vision Only",
    }
    assert {p.source for p in load.problems} == {"testmini"}
    assert {pid: (p.answer_type, p.answer, p.choices) for pid, p in by_id.items()} == {
        "testmini-1": ("choice", "60°", ("30°", "60°", "90°", "120°")),
        "testmini-2": ("choice", "90°", ("30°", "60°", "90°")),
        "testmini-3": ("choice", "1", ("1", "2", "3", "4")),
        "testmini-4": ("integer", "3", ()),
        "testmini-5": ("text", "2\\sqrt{3}", ()),
        "testmini-6": ("choice", "120°", ("30°", "60°", "90°", "120°")),
        "testmini-7": ("choice", "30°", ("30°", "60°", "90°", "120°")),
    }
    # The full question, choices included, is the text shown; Vision Only shows only an instruction.
    assert by_id["testmini-1"].question == MV_QUESTION
    assert by_id["testmini-7"].question == VISION_ONLY_QUESTION
    assert by_id["testmini-6"].image is None
    for pid in ("testmini-1", "testmini-4", "testmini-7"):
        _assert_png(by_id[pid].image)
    # The mapped answers work with the existing choice scoring: the letter and the text both match.
    first = by_id["testmini-1"]
    for prediction, correct in (("B", True), ("60°", True), ("(B)", True), ("A", False), ("90", False)):
        assert answers_match(prediction, first.answer, first.answer_type, first.choices) is correct


def test_mathverse_jsonl_is_detected_and_loaded(tmp_path: Path, mv_images: Path) -> None:
    path = _write_jsonl(tmp_path / "testmini.jsonl", MV_ROWS)
    _check_mv_load(load_benchmark(path))


def test_mathverse_parquet_is_detected_and_loaded(tmp_path: Path, mv_images: Path) -> None:
    schema = pa.schema([
        ("sample_index", pa.string()), ("problem_index", pa.string()), ("problem_version", pa.string()),
        ("question", pa.string()), ("image", pa.string()), ("answer", pa.string()),
        ("question_type", pa.string()),
        ("metadata", pa.struct([(k, pa.string()) for k in ("split", "source", "subject", "subfield")])),
        ("query_wo", pa.string()), ("query_cot", pa.string()), ("question_for_eval", pa.string()),
    ])
    pq.write_table(pa.Table.from_pylist(MV_ROWS, schema=schema), tmp_path / "testmini.parquet")
    _check_mv_load(load_benchmark(tmp_path / "testmini.parquet"))


def test_mathverse_parquet_with_embedded_images(tmp_path: Path) -> None:
    # Hugging Face writes the image column as {"bytes", "path"}; sample_index may be an integer.
    rows = [{"sample_index": 10, "problem_version": "Vision Only", "question": "",
             "image": {"bytes": _image_bytes("green"), "path": "image_10.png"}, "answer": "C",
             "question_type": "multi-choice", "question_for_eval": MV_QUESTION}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mv.parquet")
    load = load_benchmark(tmp_path / "mv.parquet")
    assert load.skipped == []
    [problem] = load.problems
    assert (problem.problem_id, problem.family, problem.answer) == ("mv-10", "Vision Only", "90°")
    _assert_png(problem.image)


def test_mathverse_bad_rows_are_skipped_with_reasons(tmp_path: Path, mv_images: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = _write_jsonl(tmp_path / "mv.jsonl", [
        '{"sample_index": "1", "question": ',  # malformed first line: detection waits for a real row
        _mv_row("2"),
        _mv_row("no-choices", question="Find angle 2. Choose the correct option."),
        _mv_row("inline-choices", question="Find angle 2.\nChoices: A:30° B:60°"),
        _mv_row("one-choice", question="Find angle 2.\nChoices:\nA:30°"),
        _mv_row("letters-skip", question="Find angle 2.\nChoices:\nA:30°\nC:60°"),
        _mv_row("out-of-range", answer="E"),
        _mv_row("missing-image", image="images_version_1-4/image_404.png"),
        _mv_row("bad-type", question_type="true-false"),
        _mv_row("no-question", question="", question_for_eval=""),
        {**_mv_row("vision-only-no-image", question="", image=""), "question_for_eval": MV_QUESTION},
        _mv_row("2", answer="A"),
        _mv_row("9", version="Vision Intensive", question="How long is AB?", answer="5",
                question_type="free-form"),
    ])
    with caplog.at_level(logging.WARNING, logger="mmc_ray.tasks.benchmark"):
        load = load_benchmark(path, duplicate_ids="drop")
    assert [(p.problem_id, p.answer) for p in load.problems] == [("mv-2", "60°"), ("mv-9", "5")]
    skips = _skips(load)
    assert set(skips) == {"line 1", "no-choices", "inline-choices", "one-choice", "letters-skip", "out-of-range",
                          "missing-image", "bad-type", "no-question", "vision-only-no-image", "mv-2"}
    assert "malformed JSON" in skips["line 1"]
    for row_id in ("no-choices", "inline-choices", "one-choice", "letters-skip"):
        assert "parseable 'Choices:' block" in skips[row_id]
    assert skips["out-of-range"] == "answer 'E' is not among choices ['30°', '60°', '90°', '120°']"
    assert "image file not found" in skips["missing-image"] and "image_404.png" in skips["missing-image"]
    assert "unsupported question_type 'true-false'" in skips["bad-type"]
    assert skips["no-question"] == "missing question"
    assert "no image" in skips["vision-only-no-image"]
    assert skips["mv-2"] == "duplicate id (the first copy is kept)"
    warned = {r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
    assert any("out-of-range" in m and "not among choices" in m for m in warned)


def test_mathverse_family_falls_back_to_file_name(tmp_path: Path, mv_images: Path) -> None:
    row = _mv_row("1")
    del row["problem_version"]  # still MathVerse: sample_index alone is enough to detect it
    load = load_benchmark(_write_jsonl(tmp_path / "mv.jsonl", [row]))
    assert [(p.problem_id, p.family, p.answer) for p in load.problems] == [("mv-1", "mv", "60°")]


@pytest.mark.parametrize(
    ("row", "expected"),
    [(_mv_row("1"), "mathverse"), ({"problem_version": "Text Lite"}, "mathverse"),
     ({"sample_index": "1"}, "mathverse"), ({"pid": "1", "question": "q", "answer": "1"}, "mathvista"),
     ({"id": "1", "question": "q", "answer": "1", "metadata": {"split": "testmini"}}, "mathvista")],
)
def test_detect_format(row: dict[str, Any], expected: str) -> None:
    assert detect_format(row) == expected


def test_explicit_format(tmp_path: Path, mv_images: Path) -> None:
    # MathVerse rows without the detection keys load as MathVerse only when told.
    rows = [{k: v for k, v in _mv_row("1").items() if k not in ("sample_index", "problem_version")}]
    path = _write_jsonl(tmp_path / "mv.jsonl", rows)
    told = load_benchmark(path, fmt="mathverse")
    assert [(p.problem_id, p.answer_type, p.answer) for p in told.problems] == [("mv-line 1", "choice", "60°")]
    guessed = load_benchmark(path)  # read as MathVista: "multi-choice" is not its "multi_choice"
    assert [(p.answer_type, p.answer, p.choices) for p in guessed.problems] == [("text", "B", ())]
    assert [p.answer for p in load_problem_file(path, fmt="mathverse")] == ["60°"]

    # Forcing MathVerse onto a MathVista file skips its rows (with reasons) instead of aborting.
    vista = _write_jsonl(tmp_path / "vista.jsonl", [
        {"pid": "1", "question": "q", "choices": ["a", "b"], "answer": "a", "question_type": "multi_choice"},
    ])
    assert _skips(load_benchmark(vista, fmt="mathverse")) == {
        "line 1": "unsupported question_type 'multi_choice', expected 'multi-choice' or 'free-form'"}
    assert [p.problem_id for p in load_benchmark(vista, fmt="mathvista").problems] == ["vista-1"]
    with pytest.raises(ValueError, match="unknown benchmark format"):
        load_benchmark(vista, fmt="mathvision")


def test_mathverse_problems_round_trip_through_parquet(tmp_path: Path, mv_images: Path) -> None:
    problems = load_benchmark(_write_jsonl(tmp_path / "testmini.jsonl", MV_ROWS)).problems
    write_problems(problems, tmp_path / "out.parquet")
    assert load_problem_file(tmp_path / "out.parquet") == problems


def test_a_datasets_save_to_disk_folder_loads_like_a_file(tmp_path):
    """As a user saves a Hugging Face dataset (an `Image` feature: {"bytes", "path"} structs)."""
    import datasets

    from mmc_ray.tasks.benchmark import load_benchmark
    from mmc_ray.tasks.synthetic import generate_problems

    problems = list(generate_problems(3, seed=8))
    rows = [{"pid": p.problem_id, "question": p.question, "answer": p.answer, "image": {"bytes": p.image, "path": None}}
            for p in problems]
    features = datasets.Features({"pid": datasets.Value("string"), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "image": datasets.Image()})
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    loaded = load_benchmark(tmp_path / "saved")
    assert [p.problem_id for p in loaded.problems] == [f"saved-{p.problem_id}" for p in problems]
    assert all(p.image is not None for p in loaded.problems) and not loaded.skipped
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match=r"not a `datasets\.save_to_disk` one"):
        load_benchmark(tmp_path / "empty")
