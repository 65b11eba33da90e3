"""The `mmc-ray` command as a user runs it, in a subprocess."""

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmc_ray.tasks.problem import read_problems


def mmc_ray(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmc_ray.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    # The whole pipeline incl. a short DeepSpeed fit (which may compile its CPU op first: ~40 s).
    proc = mmc_ray("demo", "--out", str(out), "tasks.n=12", "generate.max_new_tokens=160", "train.max_steps=4",
                   cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 12 problems" in proc.stdout
    assert (out / "tiny-vlm" / "config.json").exists()
    table = {line.split()[0]: line.split() for line in proc.stdout.splitlines()
             if line.startswith(("simulated ", "hf "))}
    assert set(table) == {"simulated", "hf"}
    for engine in ("simulated", "hf"):
        rows = pq.read_table(out / f"results-{engine}.parquet").to_pylist()
        assert len(rows) == 12
        accuracy = sum(r["correct"] for r in rows) / len(rows)
        assert table[engine][2] == f"{accuracy:.3f}"  # the printed figure is the file's
    trees = pq.read_table(out / "trees").to_pylist()
    assert sorted(t["problem_id"] for t in trees) == sorted(r["problem_id"] for r in rows)
    assert "search: 12 trees searched, 0 already done, 0 skipped" in proc.stdout
    assert (out / "mmc-dataset" / "README.md").exists()
    assert "annotate:" in proc.stdout and "agreement with ground truth" in proc.stdout
    assert "train: 4 steps" in proc.stdout and (out / "critic" / "hf" / "config.json").exists()
    simulated = pq.read_table(out / "results-simulated.parquet").to_pylist()
    # The simulator writes parseable reasoning and gets most easy problems right.
    assert all(r["extracted_answer"] is not None for r in simulated)
    assert sum(r["correct"] for r in simulated) >= 4


def test_search_local_resumes(tmp_path):
    problems = tmp_path / "p.parquet"
    assert mmc_ray("tasks", "generate", "--n", "6", "--out", str(problems), cwd=tmp_path).returncode == 0
    args = ("search", "--local", "--problems", str(problems), "--out", "trees", "actor.kind=simulated",
            "search.num_simulations=3")
    first = mmc_ray(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "search: 6 trees searched, 0 already done" in first.stdout
    again = mmc_ray(*args, cwd=tmp_path)
    assert "search: 0 trees searched, 6 already done" in again.stdout
    assert len(pq.read_table(tmp_path / "trees").to_pylist()) == 6


def test_tasks_generate_and_simulated_generate(tmp_path):
    problems = tmp_path / "p.parquet"
    proc = mmc_ray("tasks", "generate", "--n", "8", "--out", str(problems), "--families",
                   "counting,geometry", "--difficulties", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = read_problems(problems)
    assert [p.family for p in loaded].count("counting") == 4
    assert {p.difficulty for p in loaded} == {1}
    results = tmp_path / "r.parquet"
    proc = mmc_ray("generate", "--problems", str(problems), "--out", str(results), "--engine",
                   "simulated", "generate.n=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = pq.read_table(results).to_pylist()
    assert len(rows) == 24 and {r["sample_index"] for r in rows} == {0, 1, 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--problems", "missing.parquet", "--out", "r.parquet", "--engine", "simulated"],
         "missing.parquet"),
        (["tasks", "generate", "--out", "p.parquet", "tasks.nn=3"], "unknown key tasks.nn"),
        (["tasks", "generate", "--out", "p.parquet", "--families", "poetry"], "poetry"),
        (["generate", "--problems", "p.parquet", "--out", "r.parquet", "actor.model_path=nowhere"],
         "no model at nowhere"),
    ],
)
def test_clear_errors_not_tracebacks(tmp_path, args, message):
    if "p.parquet" in args and args[0] == "generate":
        assert mmc_ray("tasks", "generate", "--n", "2", "--out", "p.parquet", cwd=tmp_path).returncode == 0
    proc = mmc_ray(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_generate_reads_a_local_benchmark_file_and_counts_skips(tmp_path):
    import io
    import json

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buf, "PNG")
    (tmp_path / "ok.png").write_bytes(buf.getvalue())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    rows = [
        {"pid": "1", "question": "How many?", "image": "ok.png", "answer": "3"},
        {"pid": "2", "question": "Which?", "image": "broken.png", "answer": "A", "choices": ["A", "B"]},
        {"pid": "3", "question": "Where?", "image": "absent.png", "answer": "4"},
    ]
    bench = tmp_path / "mini.jsonl"
    bench.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    proc = mmc_ray("generate", "--problems", str(bench), "--out", "r.parquet", "--engine", "simulated",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 rows" in proc.stderr and "2" in proc.stderr and "3" in proc.stderr
    rows_out = pq.read_table(tmp_path / "r.parquet").to_pylist()
    # The simulator only knows synthetic problems: the benchmark row is an error row, not a crash.
    assert [r["problem_id"] for r in rows_out] == ["mini-1"]
    assert rows_out[0]["finish_reason"] == "error" and rows_out[0]["correct"] is False
