"""`RefineRecord`: one round of refinement for one problem (a `REFINE_SCHEMA` row), what the loop
returns, the records folder holds, and the refinement answers the critic's data is made of."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mmc_ray.schemas import REFINE_SCHEMA


@dataclass(frozen=True)
class RefineRecord:
    """Round 0 is the single-pass answer; `final` marks the answer the loop returns, and the problem's
    last round carries why the loop stopped (`stop_reason`)."""

    problem_id: str
    round: int
    family: str
    source: str
    text: str
    num_steps: int
    extracted_answer: str | None
    correct: bool
    # Synthetic tasks: the first step that disagrees with the ground truth (a right answer can rest
    # on a wrong step); None when every step agrees or there is no ground truth.
    true_first_wrong_step: int | None
    temperature: float
    answer_repeated: bool  # every revision sample repeated a tried answer
    actor_finish_reason: str
    actor_tokens: int
    critic_text: str
    critic_verdict: str | None  # correct | incorrect | None (unparseable)
    critic_first_wrong_step: int | None
    critic_error_type: str | None
    critic_parse_error: str
    critic_tokens: int
    final: bool
    stop_reason: str = ""

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RefineRecord:
        return cls(**{name: row[name] for name in REFINE_SCHEMA.names})
