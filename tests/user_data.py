"""Files as a user brings them, written by tests.

* `write_user_jsonl`: synthetic problems as a MathVista-style JSONL with image files beside it and no
  step programs (tests/e2e/test_ray_job.py, tests/unit/test_user_problems.py). The loader names them
  "<file name>-<synthetic id>", so the simulated actor can still solve them from the id while every
  other stage treats them as user data.
* `write_visual_process_bench`: a step-labelled file in the VisualProcessBench layout, with three
  good rows and four bad ones (tests/unit/test_step_bench.py, tests/e2e/test_cli.py).
"""

import json
from pathlib import Path

from mmc_ray.tasks.synthetic import generate_problems


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


VPB_PROBLEMS = list(generate_problems(3, seed=7))


def _bench_row(i: int, labels: list, source: str, **changes) -> dict:
    p = VPB_PROBLEMS[i]
    row = {"id": f"vpb-{i}", "image": [f"images/{i}.png"], "question": p.question, "answer": p.answer,
           "response": {"steps": [f"step {k} of {i}" for k in range(1, len(labels) + 1)],
                        "process_correctness": labels},
           "policy_model": "InternVL2.5-8B", "data_source": source}
    return {**row, **changes}


def write_visual_process_bench(folder: Path) -> Path:
    """test.jsonl with images/ beside it: vpb-0 (wrong at step 3, MathVerse), vpb-1 (correct, two
    images), vpb-2 (wrong at step 2, DynaMath); then too-few-labels, label-two, no-image and a line 7
    that is not JSON."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(VPB_PROBLEMS):
        (folder / "images" / f"{i}.png").write_bytes(p.image)
    rows = [_bench_row(0, [1, 1, -1, 0], "MathVerse"),
            _bench_row(1, [1, 1], "MathVerse", image=["images/1.png", "images/0.png"]),
            _bench_row(2, [1, -1], "DynaMath"),
            _bench_row(0, [1, 1], "DynaMath", id="too-few-labels",
                       response={"steps": ["a", "b", "c"], "process_correctness": [1, 1]}),
            _bench_row(0, [1, 2], "DynaMath", id="label-two"),
            _bench_row(0, [1], "DynaMath", id="no-image", image=["images/absent.png"])]
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    return path
