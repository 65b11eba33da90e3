"""Refinement answers become critic data: every answer the actor wrote while refined is critiqued
by the rule annotator into the dataset, resumably, in the problem's split."""

import pyarrow.parquet as pq

from mmc_ray.config import Config, RefineConfig, SimulatorConfig
from mmc_ray.engines.rule_critic import RuleCriticEngine
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.refine.loop import RefinementLoop
from mmc_ray.stages.annotate import annotate_refinement_to_dir, make_split_of
from mmc_ray.stages.dataset_card import SPLITS, card_stats
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.synthetic import generate_problems

CFG = Config()


def test_refinement_answers_are_critiqued_into_the_dataset(tmp_path):
    problems = list(generate_problems(24, seed=5))
    actor = SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.3))
    records = RefinementLoop(actor, RuleCriticEngine(), RefineConfig(max_rounds=2)).run(problems)
    summary = annotate_refinement_to_dir(records, problems, tmp_path, CFG, progress=False)
    rows = [r for s in SPLITS for p in shard_paths(tmp_path / "data", s) for r in pq.read_table(p).to_pylist()]
    assert summary.critiques == len(rows) and summary.critiques + summary.drops == len(records)
    assert {r["kind"] for r in rows} == {"refined"}
    by_id = {f"{r.problem_id}:refine:{r.round}": r for r in records}
    split_of = make_split_of(CFG.annotate.split_fractions, CFG.annotate.seed)
    for row in rows:
        record = by_id[row["pair_id"]]
        assert row["split"] == split_of(row["problem_id"])
        # the rule critique agrees with the refinement record's own ground truth
        assert row["first_wrong_step"] == record.true_first_wrong_step
        assert row["verdict"] == ("correct" if record.true_first_wrong_step is None else "incorrect")
    assert any(r["verdict"] == "incorrect" for r in rows) and any(r["verdict"] == "correct" for r in rows)
    assert card_stats(tmp_path)["kind"]["refined"] == len(rows)
    again = annotate_refinement_to_dir(records, problems, tmp_path, CFG, progress=False)
    assert (again.critiques, again.drops, again.skipped_existing) == (0, 0, len(records))


def test_with_the_llm_annotator_a_wrong_answer_is_critiqued_beside_a_right_one(tmp_path, monkeypatch):
    """The annotator engine (scripted here: what matters is which prompt it is shown) gets the
    annotator prompt for a wrong answer whose problem the actor also answered right, and the critic
    prompt for every other answer."""
    import dataclasses
    import json

    from mmc_ray.engine_protocol import Completion, GenerationResult
    from mmc_ray.engines import factory

    class PromptAwareAnnotator:
        name = "scripted-annotator"

        def generate(self, requests):
            def reply(r):
                pair = "Solution B" in json.dumps(r.messages)
                text = ("Verdict: incorrect\nFirst wrong step: 1\nError type: other\nExplanation: B slips."
                        if pair else "Verdict: correct\nExplanation: alone.")
                return GenerationResult((Completion(text, "stop", 8),), 0)
            return [reply(r) for r in requests]

    monkeypatch.setattr(factory, "build_engine", lambda cfg: PromptAwareAnnotator())
    problems = list(generate_problems(24, seed=5))
    actor = SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.3))
    records = RefinementLoop(actor, RuleCriticEngine(), RefineConfig(max_rounds=2)).run(problems)
    cfg = dataclasses.replace(CFG, annotate=dataclasses.replace(CFG.annotate, method="llm"))
    summary = annotate_refinement_to_dir(records, problems, tmp_path, cfg, progress=False)
    rows = {r["pair_id"]: r for s in SPLITS for p in shard_paths(tmp_path / "data", s)
            for r in pq.read_table(p).to_pylist()}
    assert summary.critiques == len(rows) == len(records) and summary.drops == 0
    solved = {r.problem_id for r in records if r.correct}
    paired = 0
    for record in records:
        row = rows[f"{record.problem_id}:refine:{record.round}"]
        partnered = not record.correct and record.problem_id in solved
        assert bool(row["reference_steps"]) == partnered and row["annotator"] == "llm"
        assert row["verdict"] == ("incorrect" if partnered else "correct")  # which prompt it saw
        paired += partnered
    assert paired > 0 and paired < len(records)
