"""Best-of-N with the critic as a verifier (refine.strategy best_of_n|both): N samples per problem,
each scored by the critic, resumable, and the report's accuracy vs N from what is on disk."""

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from mmc_ray.config import Config, RefineConfig, SimulatorConfig
from mmc_ray.engine_protocol import Completion, GenerationResult
from mmc_ray.engines.rule_critic import RuleCriticEngine
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.eval.report import write_report
from mmc_ray.orchestration.preflight import pipeline_problems
from mmc_ray.refine.run import best_of_n_to_dir, refine_to_dir
from mmc_ray.refine.verify import sample_and_verify
from mmc_ray.store.layout import best_of_n_shards
from mmc_ray.tasks.synthetic import generate_problems

CFG = RefineConfig(best_of_n=(1, 2, 4), problems_per_batch=8)


def actor():
    return SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.35, arithmetic_error_rate=0.2))


def test_the_oracle_as_verifier_finds_a_right_sample_whenever_one_exists_and_beats_one_sample(tmp_path):
    problems = list(generate_problems(24, seed=5))
    summary = best_of_n_to_dir(problems, actor(), RuleCriticEngine(), CFG, tmp_path / "bon", progress=False)
    assert (summary.problems, summary.rows) == (24, 24 * 4)
    rows = [r for p in best_of_n_shards(tmp_path / "bon") for r in pq.read_table(p).to_pylist()]
    assert sorted({r["sample"] for r in rows}) == [0, 1, 2, 3] and {r["scored_by"] for r in rows} == {"verdict"}
    written = write_report(tmp_path / "records", tmp_path / "report", {"title": "t"}, tmp_path / "bon", CFG.best_of_n)
    b = written.best_of_n
    assert written.refinement is None and written.plot is None  # best-of-N only: no refinement figures
    by_problem = {}
    for r in rows:
        by_problem.setdefault(r["problem_id"], []).append(r)
    single = sum(next(r for r in s if r["sample"] == 0)["correct"] for s in by_problem.values()) / 24
    assert b.best_of_n_p_correct[0] == b.majority_vote[0] == b.any_correct[0] == pytest.approx(single)
    # The oracle judges a right answer from right steps correct: it finds one whenever a sample has it.
    sound = sum(any(r["correct"] and r["critic_verdict"] == "correct" for r in s) for s in by_problem.values()) / 24
    assert b.best_of_n_p_correct[-1] >= sound > single
    assert b.gain == pytest.approx(b.best_of_n_p_correct[-1] - single) and b.gain > 0
    md = written.markdown.read_text()
    assert "## Best-of-N (the critic as a verifier)" in md and "| majority vote |" in md
    again = best_of_n_to_dir(problems, actor(), RuleCriticEngine(), CFG, tmp_path / "bon", progress=False)
    assert (again.problems, again.resumed) == (0, 24)


def test_both_strategies_share_one_report(tmp_path):
    problems = list(generate_problems(6, seed=8))
    refine_to_dir(problems, actor(), RuleCriticEngine(), CFG, tmp_path / "records", progress=False)
    best_of_n_to_dir(problems, actor(), RuleCriticEngine(), CFG, tmp_path / "bon", progress=False)
    written = write_report(tmp_path / "records", tmp_path / "report", {}, tmp_path / "bon", CFG.best_of_n)
    saved = json.loads(written.json.read_text())["metrics"]
    assert saved["problems"] == saved["best_of_n"]["problems"] == 6 and written.plot is not None
    assert saved["best_of_n"]["n"] == [1, 2, 4]


class FailingActor:
    name = "failing"

    def generate(self, requests):
        return [GenerationResult((Completion("", "error", 0, error="server gone"),), 0) for _ in requests]


def test_an_actor_error_is_n_unscored_samples_not_a_short_problem():
    rows = sample_and_verify(list(generate_problems(2, seed=1)), FailingActor(), RuleCriticEngine(), CFG)
    assert len(rows) == 8 and all(r["scored_by"] == "error" and not r["correct"] and r["p_correct"] == 0
                                  for r in rows)


@pytest.mark.parametrize(("changes", "message"), [
    ({"best_of_n": (4, 2)}, "best_of_n"), ({"best_of_n": (0, 1)}, "best_of_n"),
    ({"best_of_n_temperature": 0.0}, "best_of_n_temperature")])
def test_bad_best_of_n_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        RefineConfig(**changes)


def test_the_pipeline_refuses_best_of_n_alone_and_names_both(tmp_path):
    cfg = Config()
    cfg = dataclasses.replace(cfg, refine=dataclasses.replace(cfg.refine, strategy="best_of_n"))
    assert any("refine.strategy=both" in p for p in pipeline_problems(cfg, tmp_path / "run"))


class OneSampleActor:
    """Answers every request with a single sample, whatever n it asked for."""

    name = "one-sample"

    def __init__(self):
        self.inner = actor()

    def generate(self, requests):
        return [GenerationResult(r.completions[:1], r.prompt_tokens) for r in self.inner.generate(requests)]


def test_samples_an_actor_did_not_return_are_errors_not_copies():
    rows = sample_and_verify(list(generate_problems(1, seed=3)), OneSampleActor(), RuleCriticEngine(), CFG)
    assert [r["scored_by"] for r in rows] == ["verdict", "error", "error", "error"]
    assert rows[1]["actor_finish_reason"] == "error" and not any(r["correct"] for r in rows[1:])
