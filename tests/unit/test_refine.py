"""The refinement loop's stopping rules and mitigations, on scripted engines with known answers."""

import dataclasses

import pyarrow as pa
import pytest

from mmc_ray.config import EngineConfig, RefineConfig, SimulatorConfig
from mmc_ray.critique.prompts import solution_in_critic_prompt
from mmc_ray.critique.schema import Critique
from mmc_ray.engine_protocol import Completion, GenerationResult, message_text
from mmc_ray.engines.factory import build_engine
from mmc_ray.engines.rule_critic import RuleCriticEngine
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.eval.metrics import evaluate
from mmc_ray.refine.loop import STOP_BUDGET, STOP_CORRECT, STOP_UNPARSEABLE, RefinementLoop
from mmc_ray.refine.records import RefineRecord
from mmc_ray.refine.run import refine_to_dir
from mmc_ray.schemas import REFINE_SCHEMA
from mmc_ray.store.shards import shard_paths
from mmc_ray.tasks.solution import reference_step_texts
from mmc_ray.tasks.synthetic import generate_problems

CFG = RefineConfig(max_rounds=2, temperatures=(0.0, 0.5, 0.9), reject_repeats=True, revision_samples=2)
PROBLEMS = list(generate_problems(4, seed=3))


def right(problem) -> str:
    return problem.reference_solution


def wrong(problem, answer: str = "999") -> str:
    steps = reference_step_texts(problem.steps)
    steps[0] = "Look at the image: the value is 123."
    return "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1)) + f"\nAnswer: {answer}"


class ScriptedActor:
    """Per problem, a list of rounds; each round is the list of sample texts the actor returns.
    Records every request it gets."""

    name = "scripted-actor"

    def __init__(self, script):
        self.script, self.requests, self.calls = script, [], 0

    def generate(self, requests):
        self.calls += 1
        results = []
        for req in requests:
            rounds = self.script[req.metadata["problem_id"]]
            round_index = sum(r.metadata["problem_id"] == req.metadata["problem_id"] for r in self.requests)
            self.requests.append(req)
            texts = rounds[min(round_index, len(rounds) - 1)]
            completions = tuple(Completion("", "error", 0, error="boom") if t is None
                                else Completion(t, "stop", 10) for t in texts[: req.n])
            completions += (completions[-1],) * (req.n - len(completions))
            results.append(GenerationResult(completions, 5))
        return results


class ScriptedCritic:
    """Answers each critic prompt with `respond(problem_id, steps, answer)`; counts calls."""

    name = "scripted-critic"

    def __init__(self, respond):
        self.respond, self.calls, self.seen = respond, 0, []

    def generate(self, requests):
        self.calls += 1
        out = []
        for req in requests:
            steps, answer = solution_in_critic_prompt(message_text(req.messages[-1]))
            self.seen.append((req.metadata["problem_id"], steps, answer))
            out.append(GenerationResult((Completion(self.respond(req.metadata["problem_id"], steps, answer),
                                                    "stop", 7),), 5))
        return out


def by_problem(rows):
    grouped = {}
    for r in rows:
        grouped.setdefault(r.problem_id, []).append(r)
    return grouped


def test_correct_first_answer_stops_after_one_critique():
    p = PROBLEMS[0]
    actor = ScriptedActor({p.problem_id: [[right(p)]]})
    rows = RefinementLoop(actor, RuleCriticEngine(), CFG).run([p])
    assert len(rows) == 1
    assert rows[0].correct and rows[0].final and rows[0].critic_verdict == "correct"
    assert rows[0].stop_reason == STOP_CORRECT


def test_a_refine_record_is_a_refine_schema_row():
    p = PROBLEMS[1]
    records = RefinementLoop(ScriptedActor({p.problem_id: [[wrong(p)], [right(p)]]}), RuleCriticEngine(),
                             dataclasses.replace(CFG, temperatures=(0.0, 0.5))).run([p])
    assert [f.name for f in dataclasses.fields(RefineRecord)] == REFINE_SCHEMA.names
    table = pa.Table.from_pylist([r.to_row() for r in records], schema=REFINE_SCHEMA)
    assert [RefineRecord.from_row(row) for row in table.to_pylist()] == records and len(records) == 2


def test_wrong_then_revised_answer_is_kept_and_critique_reaches_the_actor():
    p = PROBLEMS[1]
    actor = ScriptedActor({p.problem_id: [[wrong(p)], [right(p)]]})
    rows = RefinementLoop(actor, RuleCriticEngine(), CFG).run([p])
    assert [r.round for r in rows] == [0, 1]
    assert [r.correct for r in rows] == [False, True]
    assert rows[0].critic_verdict == "incorrect" and rows[0].critic_first_wrong_step == 1
    assert rows[0].true_first_wrong_step == 1
    assert [r.final for r in rows] == [False, True] and rows[1].stop_reason == STOP_CORRECT
    revision = actor.requests[1]
    assert revision.messages[1]["content"] == wrong(p)  # its previous answer
    assert "First wrong step: 1" in revision.messages[2]["content"]  # the critique it must act on


def test_budget_ends_the_loop_and_temperature_follows_the_schedule():
    p = PROBLEMS[0]
    actor = ScriptedActor({p.problem_id: [[wrong(p, "1")], [wrong(p, "2")], [wrong(p, "3")]]})
    rows = RefinementLoop(actor, RuleCriticEngine(), CFG).run([p])
    assert len(rows) == CFG.max_rounds + 1
    assert rows[-1].stop_reason == STOP_BUDGET
    assert [r.temperature for r in actor.requests] == [0.0, 0.5, 0.9]
    assert [r.temperature for r in rows] == pytest.approx([0.0, 0.5, 0.9])


def critic_flagging(steps_by_answer):
    """A critic that flags the step given per answer (None: says correct)."""
    def respond(_pid, steps, answer):
        step = steps_by_answer[answer]
        if step is None:
            return Critique("correct", "fine").to_text()
        return Critique("incorrect", f"step {step} is wrong", step, "calculation").to_text()
    return respond


def test_keep_best_returns_the_answer_the_critic_rated_highest():
    p = PROBLEMS[2]
    n = len(p.steps)
    script = {p.problem_id: [[wrong(p, "1")], [wrong(p, "2")], [wrong(p, "3")]]}
    critic = ScriptedCritic(critic_flagging({"1": 1, "2": n, "3": 1}))  # round 1 got furthest
    rows = RefinementLoop(ScriptedActor(script), critic, CFG).run([p])
    assert [r.final for r in rows] == [False, True, False]
    rows = RefinementLoop(ScriptedActor(script), critic, dataclasses.replace(CFG, keep_best=False)).run([p])
    assert [r.final for r in rows] == [False, False, True]


def test_revision_repeating_a_tried_answer_is_rejected_for_an_untried_sample():
    p = PROBLEMS[0]
    script = {p.problem_id: [[wrong(p, "1")], [wrong(p, "1"), wrong(p, "2")], [wrong(p, "2"), wrong(p, "1")]]}
    critic = ScriptedCritic(critic_flagging({"1": 1, "2": 1}))
    rows = RefinementLoop(ScriptedActor(script), critic, CFG).run([p])
    assert [r.extracted_answer for r in rows] == ["1", "2", "2"]
    assert [r.answer_repeated for r in rows] == [False, False, True]  # round 2 had nothing new

    actor = ScriptedActor(script)
    rows = RefinementLoop(actor, critic, dataclasses.replace(CFG, reject_repeats=False)).run([p])
    assert [r.extracted_answer for r in rows] == ["1", "1", "2"]
    assert [r.n for r in actor.requests] == [1, 1, 1]


def test_garbage_critic_output_stops_with_the_reason_and_keeps_the_answer():
    p = PROBLEMS[1]
    critic = ScriptedCritic(lambda *_: "I think this looks mostly ok?? import os; os.system('rm')")
    rows = RefinementLoop(ScriptedActor({p.problem_id: [[wrong(p)]]}), critic, CFG).run([p])
    assert len(rows) == 1 and rows[0].final
    assert rows[0].stop_reason == STOP_UNPARSEABLE
    assert rows[0].critic_verdict is None and "Verdict" in rows[0].critic_parse_error


def test_actor_error_on_the_first_answer_still_leaves_a_row():
    p = PROBLEMS[0]
    rows = RefinementLoop(ScriptedActor({p.problem_id: [[None]]}), RuleCriticEngine(), CFG).run([p])
    assert len(rows) == 1 and not rows[0].correct and rows[0].final
    assert rows[0].stop_reason.startswith("actor error") and "boom" in rows[0].stop_reason


def test_one_engine_call_per_role_per_round_for_the_whole_batch():
    script = {p.problem_id: [[wrong(p)], [wrong(p, "5")], [right(p)]] for p in PROBLEMS}
    actor, critic = ScriptedActor(script), ScriptedCritic(critic_flagging({"999": 1, "5": 1}))
    critic.respond = (lambda base: lambda pid, steps, answer: (
        Critique("correct", "ok").to_text() if answer not in ("999", "5") else base(pid, steps, answer)))(
        critic.respond)
    rows = RefinementLoop(actor, critic, CFG).run(PROBLEMS)
    assert actor.calls == 3 and critic.calls == 3
    assert len(rows) == 3 * len(PROBLEMS)
    assert all(r.correct for r in rows if r.final)


def test_simulated_actor_with_oracle_critic_improves_and_metrics_agree():
    """With a perfect critic every verdict and flagged step is right, and revisions fix errors."""
    problems = list(generate_problems(40, seed=11))
    actor = SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.3, revise_success_rate=0.8))
    rows = RefinementLoop(actor, RuleCriticEngine(), RefineConfig(max_rounds=3)).run(problems)
    m = evaluate([r.to_row() for r in rows])
    assert m.problems == 40
    assert m.single_pass_accuracy < 0.9  # the actor does make mistakes at this error rate
    assert m.final_accuracy > m.single_pass_accuracy
    # The oracle flags wrong steps even under a lucky right answer; only those can turn right→wrong.
    lucky = sum(r.correct and r.true_first_wrong_step is not None for r in rows if r.round == 0)
    assert m.right_to_wrong <= lucky
    assert m.critic.verdict_accuracy == 1.0
    assert m.critic.step_precision == 1.0 and m.critic.step_recall == 1.0
    first = {r.problem_id: r for r in rows if r.round == 0}
    assert m.single_pass_accuracy == sum(r.correct for r in first.values()) / 40


def test_the_blind_critic_sends_every_answer_back_until_the_budget_ends():
    """The always-revise floor: every answer, right or wrong, is flagged from step 1, so every
    problem uses the whole budget and its verdicts are right exactly on the unsound answers (a wrong
    answer, or a right one reached through a wrong step)."""
    problems = list(generate_problems(20, seed=5))
    critic = build_engine(EngineConfig(kind="blind"))
    rows = RefinementLoop(SimulatedActorEngine(SimulatorConfig()), critic, RefineConfig(max_rounds=2)).run(problems)
    assert len(rows) == 3 * len(problems)
    assert all(r.critic_verdict == "incorrect" and r.critic_first_wrong_step == 1 for r in rows)
    assert all(r.stop_reason == STOP_BUDGET for r in rows if r.round == 2)
    m = evaluate([r.to_row() for r in rows])
    unsound = sum(not r.correct or r.true_first_wrong_step is not None for r in rows)
    assert 0 < unsound < len(rows) and m.critic.verdict_accuracy == pytest.approx(unsound / len(rows))


def test_refine_to_dir_resumes_by_problem_id(tmp_path):
    script = {p.problem_id: [[right(p)]] for p in PROBLEMS}
    cfg = dataclasses.replace(CFG, problems_per_batch=3)
    first = refine_to_dir(PROBLEMS[:3], ScriptedActor(script), RuleCriticEngine(), cfg, tmp_path, progress=False)
    assert (first.problems, first.resumed) == (3, 0)
    actor = ScriptedActor(script)
    second = refine_to_dir(PROBLEMS, actor, RuleCriticEngine(), cfg, tmp_path, progress=False)
    assert (second.problems, second.resumed) == (1, 3)
    assert [r.metadata["problem_id"] for r in actor.requests] == [PROBLEMS[3].problem_id]
    assert len(shard_paths(tmp_path, "refine")) == 2
