"""Synthetic problems written out as a user's MathVista-style JSONL with image files beside it and no
step programs (tests/e2e/test_ray_job.py, tests/unit/test_user_problems.py). The loader names them
"<file name>-<synthetic id>", so the simulated actor can still solve them from the id while every
other stage treats them as user data."""

import json
from pathlib import Path

from mmc_ray.tasks.generator import generate_problems


def write_user_jsonl(path: Path, n: int, seed: int) -> Path:
    images = path.parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for problem in generate_problems(n, seed=seed):
        (images / f"{problem.problem_id}.png").write_bytes(problem.image)
        rows.append({"pid": problem.problem_id, "question": problem.question,
                     "image": f"images/{problem.problem_id}.png", "answer": problem.answer,
                     "answer_type": problem.answer_type, "choices": list(problem.choices) or None})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
