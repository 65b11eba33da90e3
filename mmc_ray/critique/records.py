"""`PathToCritique`: the record between pair mining and the annotator (a `PAIR_SCHEMA` row).

Mined divergent pairs, fully correct paths and the actor's own refinement answers all reach the
annotator as this one record, so its builders and readers cannot drift apart on column names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mmc_ray.tasks.problem import Problem

PathKind = Literal["divergent", "no_error", "refined"]


@dataclass(frozen=True)
class PathToCritique:
    """A reasoning path to critique, its problem (ground truth included), and for a divergent pair
    the correct sibling path it split from after `divergence_depth` shared steps."""

    problem: Problem
    pair_id: str
    kind: PathKind
    path_steps: tuple[str, ...]         # "Step k:" numbering stripped
    path_answer: str | None
    path_correct: bool
    divergence_depth: int = -1          # -1: no sibling (no_error, refined)
    reference_steps: tuple[str, ...] = ()
    reference_answer: str | None = None
    path_step_values: tuple[float | None, ...] = ()  # node values of the path's steps (mined paths)

    @property
    def shared_steps(self) -> tuple[str, ...]:
        return self.path_steps[: max(self.divergence_depth, 0)]

    def to_row(self) -> dict[str, Any]:
        return {**self.problem.to_row(), "pair_id": self.pair_id, "kind": self.kind,
                "divergence_depth": self.divergence_depth, "path_steps": list(self.path_steps),
                "path_answer": self.path_answer, "path_correct": self.path_correct,
                "reference_steps": list(self.reference_steps), "reference_answer": self.reference_answer,
                "path_step_values": list(self.path_step_values)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PathToCritique:
        return cls(problem=Problem.from_row(row), pair_id=row["pair_id"], kind=row["kind"],
                   path_steps=tuple(row["path_steps"]), path_answer=row["path_answer"],
                   path_correct=bool(row["path_correct"]), divergence_depth=row["divergence_depth"],
                   reference_steps=tuple(row.get("reference_steps") or ()),
                   reference_answer=row.get("reference_answer"),
                   path_step_values=tuple(row.get("path_step_values") or ()))
