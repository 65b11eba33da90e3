"""The `Problem` record every stage reads, and its conversion to and from Parquet rows."""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from mmc_ray.errors import BadInput, MissingInput
from mmc_ray.io import read_parquet, write_parquet_atomic
from mmc_ray.schemas import PROBLEM_SCHEMA
from mmc_ray.tasks.solution import SolutionStep, solution_text

ANSWER_TYPES = ("integer", "float", "choice", "text")
DuplicateIds = Literal["error", "drop"]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """A visual question with a checkable answer.

    `image` is PNG bytes (None for text-only rows). `steps` is the ground-truth solution program
    for synthetic tasks and empty for benchmark rows, which have only a final answer.
    """

    problem_id: str
    family: str
    question: str
    image: bytes | None
    answer: str
    answer_type: str
    choices: tuple[str, ...] = ()
    difficulty: int = 0
    seed: int | None = None
    steps: tuple[SolutionStep, ...] = ()
    source: str = "synthetic"

    def __post_init__(self) -> None:
        if not isinstance(self.problem_id, str) or not self.problem_id:
            raise ValueError(f"problem_id must be a non-empty string, not {self.problem_id!r}")
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(
                f"problem {self.problem_id}: answer_type {self.answer_type!r} not in {ANSWER_TYPES}"
            )
        if self.answer_type == "choice" and self.answer not in self.choices:
            raise ValueError(f"problem {self.problem_id}: answer {self.answer!r} not among choices")

    @property
    def images(self) -> tuple[bytes, ...]:
        """The images a request about this problem carries (one image part per entry)."""
        return (self.image,) if self.image is not None else ()

    @property
    def reference_solution(self) -> str:
        """Ground-truth step-by-step reasoning text (synthetic problems only)."""
        if not self.steps:
            raise ValueError(f"problem {self.problem_id} has no ground-truth steps")
        return solution_text(self.steps)

    def to_row(self) -> dict[str, Any]:
        return {
            "problem_id": self.problem_id,
            "family": self.family,
            "question": self.question,
            "image": self.image,
            "answer": self.answer,
            "answer_type": self.answer_type,
            "choices": list(self.choices),
            "difficulty": self.difficulty,
            "seed": self.seed,
            "steps": [
                {"op": s.op, "template": s.template, "value": s.value, "inputs": list(s.inputs),
                 "label": s.label}
                for s in self.steps
            ],
            "source": self.source,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Problem:
        steps = tuple(
            SolutionStep(op=s["op"], template=s["template"], value=s["value"],
                         inputs=tuple(s["inputs"]), label=s["label"])
            for s in (row.get("steps") or ())
        )
        return cls(
            problem_id=row["problem_id"],
            family=row["family"],
            question=row["question"],
            image=row.get("image"),
            answer=row["answer"],
            answer_type=row["answer_type"],
            choices=tuple(row.get("choices") or ()),
            difficulty=int(row.get("difficulty") or 0),
            seed=row.get("seed"),
            steps=steps,
            source=row.get("source") or "synthetic",
        )


def write_problems(problems: Iterable[Problem], path: str | Path) -> int:
    """Write problems to one Parquet file atomically (tmp file, then rename). Returns the count."""
    rows = [p.to_row() for p in problems]
    write_parquet_atomic(rows, PROBLEM_SCHEMA, path)
    return len(rows)


@dataclass(frozen=True)
class SkippedRow:
    row_id: str
    reason: str


def read_problems(path: str | Path, duplicate_ids: DuplicateIds = "error") -> list[Problem]:
    """Read a problems Parquet file written by `write_problems` (or any file with that schema). A
    row that is not a usable problem (a missing field, a wrong type, an image that does not decode)
    is skipped with a warning naming it, and counted; repeated ids follow `duplicate_ids`."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"problems file not found: {path}")
    table = read_parquet(path)
    missing = [f.name for f in PROBLEM_SCHEMA if f.name not in table.column_names and not f.nullable]
    if missing:
        raise BadInput(f"{path}: not a problems file, missing columns {missing}")
    problems: list[Problem] = []
    skipped: list[SkippedRow] = []
    for i, row in enumerate(table.to_pylist()):
        try:
            problem = Problem.from_row(row)
            if problem.image is not None and (why := image_error(problem.image)):
                raise ValueError(f"image does not decode: {why}")
        except (KeyError, TypeError, ValueError) as e:
            skipped.append(SkippedRow(str(row.get("problem_id") or f"row {i}"), f"{type(e).__name__}: {e}"))
            logger.warning("%s: skipping row %s: %s", path, skipped[-1].row_id, skipped[-1].reason)
            continue
        problems.append(problem)
    problems, repeated = drop_duplicate_ids(problems, path, duplicate_ids)
    skipped += repeated
    if skipped:
        logger.warning("%s: loaded %d problems, skipped %d rows", path, len(problems), len(skipped))
    return problems


def drop_duplicate_ids(problems: list[Problem], source: Path,
                       duplicate_ids: DuplicateIds = "error") -> tuple[list[Problem], list[SkippedRow]]:
    """An id given to two problems makes their trees, critiques and records collide: an error naming
    the ids (`error`), or the first copy of each kept and the others counted as skipped (`drop`)."""
    repeated = [pid for pid, n in Counter(p.problem_id for p in problems).items() if n > 1]
    if not repeated:
        return problems, []
    if duplicate_ids == "error":
        shown = ", ".join(repeated[:5]) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        raise BadInput(f"{source}: {len(repeated)} problem ids appear more than once ({shown}); give each "
                       f"problem its own id, or set tasks.duplicate_ids=drop to keep the first copy of each")
    kept: dict[str, Problem] = {}
    skipped = []
    for problem in problems:
        if problem.problem_id in kept:
            skipped.append(SkippedRow(problem.problem_id, "duplicate id (the first copy is kept)"))
            logger.warning("%s: skipping a later copy of %s", source, problem.problem_id)
        else:
            kept[problem.problem_id] = problem
    return list(kept.values()), skipped


def choices_text(choices: Sequence[str]) -> str:
    """Choices as the "(A) x (B) y" line appended to multiple-choice questions."""
    return " ".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices))



def image_error(data: bytes) -> str | None:
    """Why these image bytes cannot be used, or None when they decode."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except UnidentifiedImageError:
        return "not a recognised image format"
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return str(e) or type(e).__name__
    return None
