"""Step-labelled benchmark files: a critic is scored on solutions whose every step carries a label.

Two sources, one record (`LabelledSolution`):

* **VisualProcessBench** as the user downloads `OpenGVLab/VisualProcessBench` (never fetched by us):
  `test.jsonl` rows with `image` (a list of paths relative to the file, from its `images.zip`; the
  first image is shown, rows with more are counted), `question`, `answer`, `response` holding `steps`
  and `process_correctness` (1 correct, 0 neutral, −1 incorrect, one per step), `policy_model` and
  `data_source` (results are reported per source). The id is `id`, else the line number.
* **Our own held-out critique split** (`stages/critic_bench.py: load_critique_split`, labels from
  `critique_labels` there): the steps before a critique's first wrong step are labelled correct, that step
  incorrect, the later ones neutral (the annotator says nothing about them); a "correct" critique
  labels every step correct.

A malformed row (missing field, labels not one per step, a label outside {−1, 0, 1}, an unreadable
image) is skipped with its id and counted; it never aborts the load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmc_ray.errors import MissingInput
from mmc_ray.tasks.benchmark import _BadRow, _jsonl_rows, _to_problem
from mmc_ray.tasks.problem import Problem, SkippedRow

log = logging.getLogger(__name__)
LABELS = (-1, 0, 1)


@dataclass(frozen=True)
class LabelledSolution:
    solution_id: str
    problem: Problem
    steps: tuple[str, ...]
    labels: tuple[int, ...]  # per step: 1 correct, 0 neutral, -1 incorrect
    source: str
    policy_model: str = ""
    answer: str | None = None  # the solution's own answer line, where it is apart from its steps

    @property
    def first_wrong_step(self) -> int:
        """ProcessBench's label: the earliest incorrect step (1-based), or -1 for none."""
        return next((i + 1 for i, label in enumerate(self.labels) if label == -1), -1)


@dataclass
class StepBenchLoad:
    solutions: list[LabelledSolution] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    several_images: int = 0  # rows with more than one image: the first was shown


def _labelled(row: dict[str, Any], row_id: str, name: str, root: Path,
              load: StepBenchLoad) -> LabelledSolution:
    response = row.get("response")
    if not isinstance(response, dict):
        raise _BadRow("missing 'response' object")
    steps, labels = response.get("steps"), response.get("process_correctness")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
        raise _BadRow("response.steps must be a non-empty list of texts")
    if not isinstance(labels, list) or len(labels) != len(steps):
        raise _BadRow(f"response.process_correctness must hold one label per step ({len(steps)})")
    if any(isinstance(v, bool) or v not in LABELS for v in labels):
        raise _BadRow(f"process_correctness labels must be -1, 0 or 1, got {labels}")
    images = row.get("image")
    if isinstance(images, list):
        load.several_images += len(images) > 1
        images = images[0] if images else None
    source = str(row.get("data_source") or name)
    problem = _to_problem({**row, "image": images}, row_id, name, source, root)
    return LabelledSolution(row_id, problem, tuple(s.strip() for s in steps), tuple(int(v) for v in labels),
                            source, str(row.get("policy_model") or ""))


def load_visual_process_bench(path: str | Path, image_root: str | Path | None = None) -> StepBenchLoad:
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"step-labelled benchmark file not found: {path}")
    root = Path(image_root) if image_root is not None else path.parent
    load = StepBenchLoad()
    for fallback_id, row in _jsonl_rows(path):
        row_id = fallback_id
        try:
            if isinstance(row, str):
                raise _BadRow(row)
            row_id = str(row.get("id") or fallback_id)
            load.solutions.append(_labelled(row, row_id, path.stem, root, load))
        except _BadRow as err:
            load.skipped.append(SkippedRow(row_id=row_id, reason=str(err)))
            log.warning("%s: skipping row %s: %s", path.name, row_id, err)
    return load
