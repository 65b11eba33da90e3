"""The `mmc-ray` command as a user runs it, in a subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from mmc_ray.models.shipped import SEEING_BASE
from mmc_ray.tasks.problem import read_problems


def mmc_ray(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmc_ray.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_demo_pipeline_two_rounds_and_report_matches_records(tmp_path):
    out = tmp_path / "demo"
    # Two flywheel rounds, each with a short DeepSpeed fit (the first may compile its CPU op: ~40 s).
    args = ("demo", "--out", str(out), "--rounds", "2", "tasks.n=10", "pipeline.eval_problems=8",
            "train.max_steps=3", "refine.max_rounds=2", "refine.critic_max_new_tokens=48")
    proc = mmc_ray(*args, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "tiny-vlm").exists()  # the critic starts from the shipped seeing base
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["init_model"] == str(SEEING_BASE)
    # the chatter went to the run folder's log, which the last line names beside Ray's worker logs
    assert f"logs: {out / 'mmc-ray.log'} (this run); " in proc.stdout.splitlines()[-1]
    assert "Ray worker logs: " in (out / "mmc-ray.log").read_text()
    for r in (1, 2):
        assert (out / f"round-{r}" / "critic" / "hf" / "config.json").exists()
        assert len(pq.read_table(out / f"round-{r}" / "trees").to_pylist()) == 10
    # Round 1's refinement answers on its training problems became critic data for round 2.
    kinds = {row["kind"] for row in pq.read_table(out / "mmc-dataset" / "data").to_pylist()}
    assert "refined" in kinds and "divergent" in kinds
    summary = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["oracle"]["verdict_accuracy"] == 1.0
    # The blind floor (every answer sent back) ran on the held-out problems too.
    assert summary["blind"]["parse_rate"] == 1.0 and (out / "refine-blind" / "records").is_dir()
    for r in (1, 2):
        records = pq.read_table(out / f"round-{r}" / "refine" / "records").to_pylist()
        first = {x["problem_id"]: x["correct"] for x in records if x["round"] == 0}
        final = {x["problem_id"]: x["correct"] for x in records if x["final"]}
        assert len(first) == len(final) == 8
        report = json.loads((out / f"round-{r}" / "refine" / "report" / "report.json").read_text())["metrics"]
        assert report["single_pass_accuracy"] == pytest.approx(sum(first.values()) / 8)
        assert report["final_accuracy"] == pytest.approx(sum(final.values()) / 8)
        flips = sum(not first[k] and final[k] for k in first), sum(first[k] and not final[k] for k in first)
        assert (report["wrong_to_right"], report["right_to_wrong"]) == flips
        assert summary["rounds"][r - 1]["final_accuracy"] == report["final_accuracy"]
    md = (out / "report.md").read_text()
    assert "| round 2 (trained) |" in md and "| oracle (rule) |" in md and "| blind (always revise) |" in md
    assert "**The trained critic (round 2) " in md and " the blind floor:** " in md
    assert "](critics_by_round.png)" in md and (out / "critics_by_round.png").stat().st_size > 0
    again = mmc_ray(*args, cwd=tmp_path, timeout=600)  # everything is on disk: a rerun only reports
    assert again.returncode == 0, again.stderr
    assert "search: 0 trees searched, 10 already done" in again.stdout
    assert "critic already exported" in again.stdout and "refine: 0 problems refined, 8 already done" in again.stdout
    resumed = json.loads((out / "report.json").read_text())  # the rerun's report still has the fits' figures
    assert [r["train"] for r in resumed["rounds"]] == [r["train"] for r in summary["rounds"]]
    assert summary["rounds"][0]["train"]["steps"] == 3 and summary["rounds"][0]["actor"]["model"] == "simulated actor"
    assert (resumed["invocations"], summary["invocations"]) == (2, 1)
    assert resumed["seconds_all_invocations"] > summary["seconds"]  # the report's time is the run's, not the rerun's
    assert "over 2 invocations" in (out / "report.md").read_text()


def test_refine_and_eval_commands_with_the_oracle_critic(tmp_path):
    problems = tmp_path / "p.parquet"
    assert mmc_ray("tasks", "generate", "--n", "12", "--out", str(problems), cwd=tmp_path).returncode == 0
    proc = mmc_ray("refine", "--local", "--problems", str(problems), "--out", "refined", "critic.kind=rule",
                   "actor.simulator.observe_error_rate=0.4", "refine.strategy=both", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "refine: 12 problems refined" in proc.stdout and "verdict accuracy 100.0%" in proc.stdout
    assert "best-of-n: 12 problems sampled and verified" in proc.stdout and "N=8 " in proc.stdout
    assert (tmp_path / "refined" / "mmc-ray.log").exists() and "refined/mmc-ray.log (this run)" in proc.stdout
    proc = mmc_ray("eval", "--refine", "refined", "--out", "again", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ours = json.loads((tmp_path / "again" / "report.json").read_text())["metrics"]
    first = json.loads((tmp_path / "refined" / "report" / "report.json").read_text())["metrics"]
    assert ours == first and (tmp_path / "again" / "accuracy_by_round.png").exists()
    assert ours["best_of_n"]["n"] == [1, 2, 4, 8] and ours["best_of_n"]["problems"] == 12


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
        (["generate", "--problems", "p.parquet", "--out", "r.parquet", "--engine", "hf", "actor.model_path=nowhere"],
         "no model at nowhere"),
        (["serve", "--checkpoint", "nowhere"], "no critic at nowhere"),
        (["eval", "--refine", "nothing"], "no refine-*.parquet records in nothing/records"),
        (["refine", "--problems", "p.parquet", "--out", "x", "critic.kind=openai"], "critic.openai.base_url"),
    ],
)
def test_clear_errors_not_tracebacks(tmp_path, args, message):
    if "p.parquet" in args and args[0] in ("generate", "refine"):
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


def test_refine_and_report_on_a_mathverse_style_file(tmp_path, tiny_vlm_path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buf, "PNG")
    (tmp_path / "img.png").write_bytes(buf.getvalue())
    rows = [
        {"sample_index": "1", "problem_version": "Text Dominant", "question": "Angle?\nChoices:\nA:30°\nB:60°",
         "image": "img.png", "answer": "B", "question_type": "multi-choice"},
        {"sample_index": "2", "problem_version": "Vision Intensive", "question": "Length of AB?",
         "image": "img.png", "answer": "3", "question_type": "free-form"},
        {"sample_index": "3", "problem_version": "Text Dominant", "question": "Broken?", "image": "gone.png",
         "answer": "1", "question_type": "free-form"},
    ]
    (tmp_path / "mathverse.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tiny = str(tiny_vlm_path)
    proc = mmc_ray("refine", "--local", "--problems", "mathverse.jsonl", "--out", "refined", "actor.kind=hf",
                   f"actor.model_path={tiny}", f"--critic-model={tiny}", "refine.max_rounds=1",
                   "refine.actor_max_new_tokens=12", "refine.critic_max_new_tokens=12",
                   "refine.strategy=both", "refine.best_of_n=[1,2]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 rows" in proc.stderr  # the row with the missing image, counted
    report = json.loads((tmp_path / "refined" / "report" / "report.json").read_text())["metrics"]
    assert report["problems"] == 2
    assert set(report["families"]) == {"Text Dominant", "Vision Intensive"}
    assert report["critic"]["step_f1"] is None  # no ground-truth steps on benchmark rows
    # Best-of-N on a benchmark file: 2 samples of each problem, scored by the critic, each judged
    # against the file's own answer; accuracy vs N beside majority vote and the any-correct bound.
    best = report["best_of_n"]
    assert best["problems"] == 2 and best["n"] == [1, 2]
    assert best["any_correct"][1] >= best["any_correct"][0]
    assert all(0 <= v <= 1 for key in ("best_of_n_p_correct", "majority_vote") for v in best[key])


def test_eval_critic_scores_the_tiny_critic_on_a_visual_process_bench_file(tmp_path, tiny_vlm_path):
    from user_data import write_visual_process_bench

    bench = write_visual_process_bench(tmp_path / "vpb")
    proc = mmc_ray("eval-critic", "--bench", str(bench), "--critic-model", str(tiny_vlm_path), "--out", "out",
                   "refine.critic_max_new_tokens=24", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["solutions"] == report["scored_solutions"] == 3 and len(report["skipped"]) == 4
    assert set(report["processbench"]["groups"]) == {"MathVerse", "DynaMath"}
    scores = report["step_macro_f1_from_scores"]  # the local critic's own likelihoods, no parsing
    assert scores["steps"] == 7 and scores["macro_f1"] is not None  # 8 steps, vpb-0's neutral one left out
    assert "ProcessBench F1" in proc.stdout and "MathVerse" in proc.stdout
    missing = mmc_ray("eval-critic", "--bench", "absent.jsonl", "--critic-model", str(tiny_vlm_path), "--out", "o",
                      cwd=tmp_path)
    assert missing.returncode == 2 and "--bench absent.jsonl: not found" in missing.stderr
