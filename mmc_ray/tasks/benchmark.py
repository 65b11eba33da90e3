"""Load a user-supplied benchmark file (MathVista- or MathVerse-style) into `Problem`s. Nothing is
downloaded.

Accepted files: `.jsonl` (one JSON object per line), `.parquet`, and a Hugging Face
`datasets.save_to_disk` folder (its Arrow files, read with pyarrow). MathVerse's own `testmini.json` is
one JSON array; turn it into JSONL first (`jq -c '.[]' testmini.json > testmini.jsonl`). The format is
`fmt` when named ("mathvista" / "mathverse"), else read off the file's first row: a row with
`sample_index` or `problem_version` means MathVerse. Either way, problem ids are "{name}-{row id}",
`name` (default: the file's stem) is every problem's `source`, and images are read the same way:

* `image`: an image file path (relative paths resolve against `image_root`, default the benchmark
  file's folder), raw image bytes, or a {"bytes", "path"} dict as Hugging Face `datasets` writes.
  A `decoded_image` column (HF MathVista) is preferred over `image`, which there holds a path.
  Missing/null/empty means a text-only row. Every image is decoded and re-encoded as PNG.

MathVista rows (family: `name`):

* `id` or `pid`: the row id (falls back to "line N" / "row N").
* `question`, `answer`: required. Numeric answers in JSON are turned into text.
* `choices`: optional list of strings.
* answer type: `question_type` "multi_choice" -> "choice"; else an explicit `answer_type`
  ("integer", "float", "text", "choice"; MathVista's "list" is compared as "text"); else "choice"
  when there are choices; else inferred from the answer ("12" integer, "1.5" float, other text).
  A choice answer must be one of the choices; a single letter ("B") is mapped to its choice.

MathVerse rows (the testmini release; family: `problem_version`, e.g. "Text Dominant", "Vision Only",
so results break down by version; `name` when it is missing):

* `sample_index`: the row id. `question`, `answer`: required; `question` is the text shown, choices
  included.
* `question_type` "multi-choice": the choices are the lines after a "Choices:" line, lettered in
  order from A ("A:30°", "A. 30°" or "(A) 30°"), and the answer letter ("B") is mapped to its choice
  text; answer type "choice". "free-form": the answer type is inferred from the answer as above
  ("3" integer, "2\\sqrt{3}" text).
* An empty `question` (Vision Only: the whole question is drawn in the image) shows the model only
  "Answer the question shown in the image."; the choices come from `question_for_eval`.
* `problem_index`, `metadata`, `query_wo`, `query_cot` are not used.

A bad row (missing field, unreadable image, invalid or unparseable choices, malformed JSON line) is
skipped with a logged warning naming the row; it never aborts the load.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmc_ray.errors import BadInput, MissingInput
from mmc_ray.images import ImageRejected, to_png
from mmc_ray.io import read_parquet_schema, unreadable
from mmc_ray.tasks.problem import DuplicateIds, Problem, SkippedRow, drop_duplicate_ids, read_problems

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".jsonl", ".parquet")
FORMATS = ("auto", "mathvista", "mathverse")
_ID_KEYS = {"mathvista": ("id", "pid"), "mathverse": ("sample_index",)}
_ANSWER_TYPE_ALIASES = {"integer": "integer", "float": "float", "text": "text", "choice": "choice",
                        "multi_choice": "choice", "list": "text"}
_INTEGER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)")
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?\d+[eE][-+]?\d+")
_PARQUET_BATCH_ROWS = 256  # bounds memory: image columns can be large
def _saved_dataset_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.arrow"))


def _saved_dataset_rows(folder: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """Rows of a Hugging Face `datasets.save_to_disk` folder: Arrow stream files, read with pyarrow
    (an `Image` feature is a {"bytes", "path"} struct, as `_image_bytes` takes it)."""
    number = 0
    for file in _saved_dataset_files(folder):
        try:
            with pa.memory_map(str(file)) as source:
                for batch in pa.ipc.open_stream(source):
                    for row in batch.to_pylist():
                        number += 1
                        yield f"row {number}", row
        except (pa.ArrowException, OSError) as e:
            raise BadInput(f"{file}: not a readable Arrow stream ({type(e).__name__}: {e})") from None


# MathVerse's question types, as the MathVista `question_type` values `_answer_type` reads.
_MATHVERSE_QUESTION_TYPES = {"multi-choice": "multi_choice", "free-form": "free_form"}
_CHOICES_HEADER = re.compile(r"\s*choices?\s*[:：]?\s*", re.IGNORECASE)
_CHOICE_LINE = re.compile(r"\s*(?:\((?P<paren>[A-Z])\)|(?P<bare>[A-Z])\s*[:.：])\s*(?P<text>\S.*?)\s*")
VISION_ONLY_QUESTION = "Answer the question shown in the image."


@dataclass(frozen=True)
class BenchmarkLoad:
    problems: list[Problem]
    skipped: list[SkippedRow]


class _BadRow(Exception):
    """A row that cannot become a Problem; the message is the reason recorded in `SkippedRow`."""


def infer_answer_type(answer: str) -> str:
    """"integer" for "12" / "-3" / "1,234", "float" for "1.5" / "1e-3", otherwise "text"."""
    s = answer.strip()
    if _INTEGER.fullmatch(s):
        return "integer"
    if _FLOAT.fullmatch(s):
        return "float"
    return "text"


def _to_png(data: bytes) -> bytes:
    try:
        return to_png(data)
    except ImageRejected as err:
        raise _BadRow(f"image is {err}") from err


def _read_image_file(value: str, image_root: Path) -> bytes:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = image_root / path
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _BadRow(f"image file not found: {path}") from None
    except OSError as err:
        raise _BadRow(f"cannot read image file {path}: {err}") from None


def _image_bytes(row: dict[str, Any], image_root: Path) -> bytes | None:
    """The row's image as PNG bytes, or None for a text-only row."""
    value = row.get("decoded_image")
    if value is None:
        value = row.get("image")
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise _BadRow("image dict has neither 'bytes' nor 'path'")
    if isinstance(value, str):
        if not value.strip():
            return None
        data = _read_image_file(value, image_root)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise _BadRow(f"image must be a path, bytes or a bytes/path dict, got {type(value).__name__}")
    return _to_png(data)


def _answer_type(row: dict[str, Any], answer: str, choices: tuple[str, ...]) -> str:
    if row.get("question_type") == "multi_choice":
        return "choice"
    declared = row.get("answer_type")
    if declared is not None:
        if not isinstance(declared, str) or declared not in _ANSWER_TYPE_ALIASES:
            raise _BadRow(f"unsupported answer_type {declared!r}")
        return _ANSWER_TYPE_ALIASES[declared]
    if choices and row.get("question_type") != "free_form":
        return "choice"
    return infer_answer_type(answer)


def _is_blank(value: Any) -> bool:
    return not isinstance(value, str) or not value.strip()


def _to_problem(row: dict[str, Any], row_id: str, name: str, family: str, image_root: Path) -> Problem:
    """A MathVista-style row as a Problem; MathVerse rows come here restated in these fields."""
    question = row.get("question")
    if _is_blank(question):
        raise _BadRow("missing question")
    raw_answer = row.get("answer")
    if raw_answer is None or not str(raw_answer).strip():
        raise _BadRow("missing answer")
    if not isinstance(raw_answer, (str, int, float)) or isinstance(raw_answer, bool):
        raise _BadRow(f"answer must be text or a number, got {type(raw_answer).__name__}")
    answer = str(raw_answer).strip()
    raw_choices = row.get("choices")
    if raw_choices is not None and not isinstance(raw_choices, (list, tuple)):
        raise _BadRow(f"choices must be a list, got {type(raw_choices).__name__}")
    choices = tuple(str(c) for c in raw_choices or ())
    answer_type = _answer_type(row, answer, choices)
    if answer_type == "choice":
        if not choices:
            raise _BadRow("multiple-choice row without choices")
        if answer not in choices:
            # Some benchmarks store the letter; accept it only when it is unambiguous.
            index = ord(answer.upper()) - ord("A") if len(answer) == 1 and answer.isalpha() else -1
            if not 0 <= index < len(choices):
                raise _BadRow(f"answer {answer!r} is not among choices {list(choices)}")
            answer = choices[index]
    image = _image_bytes(row, image_root)
    try:
        return Problem(problem_id=f"{name}-{row_id}", family=family, question=question, image=image,
                       answer=answer, answer_type=answer_type, choices=choices, source=name)
    except ValueError as err:  # Problem's own invariants; reported like any other bad row
        raise _BadRow(str(err)) from err


def _parse_choices(question: str) -> tuple[str, ...]:
    """The options on the lines after the last "Choices:" line, lettered from A in order; the block
    ends at the first line that is not the next letter. () if there is no such line."""
    lines = question.splitlines()
    headers = [i for i, line in enumerate(lines) if _CHOICES_HEADER.fullmatch(line)]
    if not headers:
        return ()
    choices: list[str] = []
    for line in lines[headers[-1] + 1:]:
        if not line.strip():
            continue
        match = _CHOICE_LINE.fullmatch(line)
        if match is None or (match["paren"] or match["bare"]) != chr(ord("A") + len(choices)):
            break
        choices.append(match["text"])
    return tuple(choices)


def _mathverse_problem(row: dict[str, Any], row_id: str, name: str, image_root: Path) -> Problem:
    question_type = row.get("question_type")
    if question_type not in _MATHVERSE_QUESTION_TYPES:
        raise _BadRow(f"unsupported question_type {question_type!r}, expected 'multi-choice' or 'free-form'")
    question = text = row.get("question")
    # Vision Only rows leave `question` empty: the model must read it from the image, while
    # `question_for_eval` keeps its text, which is where the choices for scoring are.
    vision_only = _is_blank(question) and not _is_blank(row.get("question_for_eval"))
    if vision_only:
        question, text = VISION_ONLY_QUESTION, row["question_for_eval"]
    choices = None
    if question_type == "multi-choice" and not _is_blank(text):
        choices = _parse_choices(text)
        if len(choices) < 2:
            raise _BadRow("multi-choice question without a parseable 'Choices:' block of 'A:...' lines")
    fields = {"question": question, "answer": row.get("answer"), "choices": choices,
              "question_type": _MATHVERSE_QUESTION_TYPES[question_type], "image": row.get("image")}
    version = row.get("problem_version")
    problem = _to_problem(fields, row_id, name, name if _is_blank(version) else version.strip(), image_root)
    if vision_only and problem.image is None:
        raise _BadRow("question is empty (only in the image) but the row has no image")
    return problem


def detect_format(row: dict[str, Any]) -> str:
    """"mathverse" for a row with MathVerse's own keys (`sample_index`, `problem_version`), else
    "mathvista". Either key suffices, so one row missing a field does not flip a whole file."""
    return "mathverse" if "sample_index" in row or "problem_version" in row else "mathvista"


def _row_id(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = row.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """(fallback row id, row) pairs; a line that is not a JSON object yields its error message."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            fallback = f"line {number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                yield fallback, "line is not valid UTF-8"
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield fallback, f"malformed JSON: {err}"
                continue
            yield fallback, row if isinstance(row, dict) else f"not a JSON object: {type(row).__name__}"


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    number = 0
    try:
        for batch in pq.ParquetFile(path, page_checksum_verification=True).iter_batches(
                batch_size=_PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield f"row {number}", row
    except (pa.ArrowException, OSError) as e:  # the file itself, not one row: nothing after it is readable
        raise unreadable(path, e) from None


def load_benchmark(path: str | Path, image_root: str | Path | None = None,
                   name: str | None = None, fmt: str = "auto",
                   duplicate_ids: DuplicateIds = "error") -> BenchmarkLoad:
    """Read a benchmark file into problems, skipping (and logging) rows that cannot be used.

    `fmt` is "mathvista", "mathverse" or "auto" (detected from the file's first row).
    Raises FileNotFoundError if `path` is not a file and ValueError for an unsupported extension or fmt.
    """
    if fmt not in FORMATS:
        raise BadInput(f"unknown benchmark format {fmt!r}: expected one of {FORMATS}")
    path = Path(path)
    if path.is_dir():
        if not _saved_dataset_files(path):
            raise BadInput(f"{path} is a folder but not a `datasets.save_to_disk` one (no *.arrow files)")
        rows = _saved_dataset_rows(path)
    elif not path.is_file():
        raise MissingInput(f"benchmark file not found: {path}")
    elif path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise BadInput(f"unsupported benchmark file {path}: expected one of {SUPPORTED_SUFFIXES} or a "
                       f"datasets.save_to_disk folder")
    else:
        rows = _jsonl_rows(path) if path.suffix.lower() == ".jsonl" else _parquet_rows(path)
    name = name or path.stem
    folder = path if path.is_dir() else path.parent
    root = Path(image_root).expanduser() if image_root is not None else folder

    problems: list[Problem] = []
    skipped: list[SkippedRow] = []
    for fallback_id, row in rows:
        row_id = fallback_id
        try:
            if isinstance(row, str):  # the reader could not even parse this row
                raise _BadRow(row)
            if fmt == "auto":  # decided once per file, so every row of it is read the same way
                fmt = detect_format(row)
            row_id = _row_id(row, _ID_KEYS[fmt]) or fallback_id
            if fmt == "mathverse":
                problems.append(_mathverse_problem(row, row_id, name, root))
            else:
                problems.append(_to_problem(row, row_id, name, name, root))
        except _BadRow as err:
            skipped.append(SkippedRow(row_id=row_id, reason=str(err)))
            logger.warning("benchmark %s: skipping row %s: %s", path.name, row_id, err)
    problems, repeated = drop_duplicate_ids(problems, path, duplicate_ids)
    skipped += repeated
    logger.info("benchmark %s (%s): loaded %d problems, skipped %d rows", path.name, fmt, len(problems),
                len(skipped))
    return BenchmarkLoad(problems=problems, skipped=skipped)


def load_problem_file(path: str | Path, image_root: str | Path | None = None,
                      fmt: str = "auto", duplicate_ids: DuplicateIds = "error") -> list[Problem]:
    """Problems from our own problems Parquet (`mmc-ray tasks generate`) or from a local benchmark
    file of format `fmt` (see `load_benchmark`); a benchmark's skipped rows are logged with their
    ids and counted in one summary line."""
    path = Path(path)
    if path.suffix == ".parquet" and path.exists() and "problem_id" in read_parquet_schema(path).names:
        return read_problems(path, duplicate_ids)
    loaded = load_benchmark(path, image_root, fmt=fmt, duplicate_ids=duplicate_ids)
    if loaded.skipped:
        logger.warning("%s: loaded %d problems, skipped %d rows (reasons above)", path,
                    len(loaded.problems), len(loaded.skipped))
    return loaded.problems
