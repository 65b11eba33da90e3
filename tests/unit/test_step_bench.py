"""Step-labelled benchmarks (`mmc-ray eval-critic`): the VisualProcessBench layout read from files the
test writes, bad rows counted skips with their ids, and a critic scored end to end."""

import json

import pytest
from user_data import VPB_PROBLEMS, write_visual_process_bench

from mmc_ray.critique.schema import Critique
from mmc_ray.engine_protocol import Completion, GenerationResult
from mmc_ray.stages.critic_bench import (
    critique_labels,
    judge,
    load_critique_split,
    load_step_bench,
    write_critic_bench,
)
from mmc_ray.tasks.step_bench import load_visual_process_bench
from mmc_ray.tasks.synthetic import generate_problems

PROBLEMS = VPB_PROBLEMS


@pytest.fixture
def bench(tmp_path):
    return write_visual_process_bench(tmp_path)


def test_the_visual_process_bench_layout_loads_and_bad_rows_are_counted_skips_with_their_ids(bench):
    load = load_visual_process_bench(bench)
    assert [s.solution_id for s in load.solutions] == ["vpb-0", "vpb-1", "vpb-2"]
    first = load.solutions[0]
    assert first.labels == (1, 1, -1, 0) and first.first_wrong_step == 3 and first.source == "MathVerse"
    assert first.problem.image == PROBLEMS[0].image and load.solutions[1].first_wrong_step == -1
    assert load.several_images == 1  # the first image is shown, and the row counted
    skipped = {s.row_id: s.reason for s in load.skipped}
    assert set(skipped) == {"too-few-labels", "label-two", "no-image", "line 7"}
    assert "one label per step" in skipped["too-few-labels"] and "-1, 0 or 1" in skipped["label-two"]
    assert "not found" in skipped["no-image"] and "malformed JSON" in skipped["line 7"]


class ScriptedCritic:
    """Critiques fixed per question, as a model that answers from the text would."""

    name = "scripted"

    def __init__(self, by_question):
        self.by_question = by_question

    def generate(self, requests):
        out = []
        for r in requests:
            question = next(q for q in self.by_question if q in json.dumps(r.messages))
            text = self.by_question[question]
            out.append(GenerationResult((Completion(text, "stop", 5),), 0))
        return out


def test_a_critic_is_scored_per_source_and_the_report_is_written(bench, tmp_path):
    load = load_visual_process_bench(bench)
    critic = ScriptedCritic({PROBLEMS[0].question: Critique("incorrect", "x", 3, "other").to_text(),  # right
                             PROBLEMS[1].question: Critique("incorrect", "x", 1, "other").to_text(),  # wrong
                             PROBLEMS[2].question: "no critique at all"})  # unparsed
    rows = judge(load.solutions, critic, max_new_tokens=16, progress=False)
    run = write_critic_bench(rows, load, tmp_path / "out", {"bench": str(bench)})
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    pb = report["processbench"]
    # erroneous: vpb-0 exact (3), vpb-2 unparsed -> acc_err 1/2; correct: vpb-1 flagged -> acc_cor 0
    assert (pb["acc_err"], pb["acc_cor"], pb["f1"]) == (0.5, 0.0, 0.0)
    assert pb["groups"]["MathVerse"]["erroneous"] == 1 and pb["groups"]["DynaMath"]["correct"] == 0
    assert report["parse_rate"] == pytest.approx(2 / 3) and report["step_macro_f1_from_scores"] is None
    assert len(report["skipped"]) == 4 == run.skipped and run.report.processbench.overall.f1 == 0.0
    judged = [json.loads(line) for line in (tmp_path / "out" / "judged.jsonl").read_text().splitlines()]
    assert [j["solution_id"] for j in judged] == ["vpb-0", "vpb-1", "vpb-2"]


def test_our_own_critique_split_is_a_step_labelled_benchmark(tmp_path):
    import dataclasses

    from mmc_ray.config import Config, SearchConfig, SimulatorConfig
    from mmc_ray.engines.simulated import SimulatedActorEngine
    from mmc_ray.stages.annotate import annotate_to_dir
    from mmc_ray.stages.search import search_to_dir
    from mmc_ray.workers.dispatch import LocalDispatcher

    search_to_dir(list(generate_problems(12, seed=3)), LocalDispatcher(SimulatedActorEngine(
        SimulatorConfig(observe_error_rate=0.3))), SearchConfig(num_simulations=6), tmp_path / "trees",
        progress=False)
    cfg = Config()
    cfg = dataclasses.replace(cfg, annotate=dataclasses.replace(cfg.annotate, split_fractions=(0.0, 0.0, 1.0)))
    annotate_to_dir(tmp_path / "trees", tmp_path / "ds", cfg, local=True, progress=False)
    load = load_critique_split(tmp_path / "ds")
    assert load.solutions and load_step_bench(tmp_path / "ds").solutions == load.solutions
    for s in load.solutions:
        assert len(s.labels) == len(s.steps) and s.problem.image is not None
    assert any(s.first_wrong_step > 0 for s in load.solutions) and any(s.first_wrong_step == -1 for s in load.solutions)
    assert critique_labels(4, "incorrect", 2) == (1, -1, 0, 0) and critique_labels(2, "correct", None) == (1, 1)


def test_a_solution_the_engine_failed_on_is_listed_not_scored_as_a_bad_critique(bench, tmp_path):
    class FailsOnOne(ScriptedCritic):
        def generate(self, requests):
            failed = GenerationResult((Completion("", "error", 0, error="server unreachable"),), 0)
            return [failed if PROBLEMS[2].question in json.dumps(r.messages) else o
                    for r, o in zip(requests, super().generate(requests), strict=True)]

    load = load_visual_process_bench(bench)
    critic = FailsOnOne({p.question: Critique("correct", "x").to_text() for p in PROBLEMS})
    run = write_critic_bench(judge(load.solutions, critic, max_new_tokens=16, progress=False), load,
                             tmp_path / "out", {})
    assert run.engine_errors == [{"solution_id": "vpb-2", "error": "server unreachable"}]
    assert run.report.solutions == 2 and run.report.parse_rate == 1.0
    assert run.report.processbench.groups.keys() == {"MathVerse"}  # vpb-2 (DynaMath) is not counted
