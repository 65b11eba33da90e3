"""The simulated actor: its error rates match its settings, its errors propagate, it continues
prefixes step by step and revises flagged steps. Uses a hand-made problem, not the task families."""

import pytest

from mmc_ray.config import SimulatorConfig
from mmc_ray.engine_protocol import GenerationRequest
from mmc_ray.engines.simulated import SimulatedActorEngine, flagged_step
from mmc_ray.tasks.problem import Problem
from mmc_ray.tasks.solution import SolutionStep, parse_reasoning

STEPS = (
    SolutionStep("count", "Count the red circles: there are {value}.", "7", label="red circles"),
    SolutionStep("read_number", "The number in the blue box is {value}.", "36", label="blue box"),
    SolutionStep("read_bar", "Bar C reaches {value}.", "40", label="bar C"),
    SolutionStep("add", "Add the count and the number: {0} + {1} = {value}.", "43", (0, 1)),
    SolutionStep("sub", "Subtract bar C: {0} - {1} = {value}.", "3", (3, 2)),
)
PROBLEM = Problem("toy-1", "toy", "What is it?", None, "3", "integer", steps=STEPS)
MESSAGES = ({"role": "user", "content": "What is it?"},)


def engine(**rates) -> SimulatedActorEngine:
    return SimulatedActorEngine(SimulatorConfig(**rates), problem_lookup={"toy-1": PROBLEM}.__getitem__)


def solve(eng, n, **kwargs):
    req = GenerationRequest(messages=MESSAGES, n=n, max_new_tokens=512,
                            metadata={"problem_id": "toy-1"}, **kwargs)
    return eng.generate([req])[0].completions


def observation_values(text):
    steps = parse_reasoning(text).steps
    return [steps[0].split()[-1].rstrip("."), steps[1].split()[-1].rstrip("."),
            steps[2].split()[-1].rstrip(".")]


def test_perfect_simulator_writes_the_reference_solution():
    [c] = solve(engine(observe_error_rate=0, arithmetic_error_rate=0, operation_error_rate=0), 1)
    assert c.text == PROBLEM.reference_solution
    assert c.finish_reason == "stop"


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_empirical_observation_error_rate_matches_setting(rate):
    completions = solve(engine(observe_error_rate=rate, arithmetic_error_rate=0, operation_error_rate=0),
                        600, seed=1)
    observed = [v for c in completions for v in observation_values(c.text)]
    wrong = sum(v != gt for v, gt in zip(observed, ["7", "36", "40"] * 600, strict=True))
    assert abs(wrong / len(observed) - rate) < 0.03


def test_arithmetic_slips_match_setting_and_errors_propagate():
    completions = solve(engine(observe_error_rate=0, arithmetic_error_rate=0.2, operation_error_rate=0),
                        600, seed=2)
    first_op_wrong = sum(parse_reasoning(c.text).steps[3] != "Add the count and the number: 7 + 36 = 43."
                         for c in completions)
    assert abs(first_op_wrong / 600 - 0.2) < 0.05
    for c in completions:
        parsed = parse_reasoning(c.text)
        step4 = parsed.steps[3].split("= ")[-1].rstrip(".")
        # step 5 reads step 4's (possibly wrong) value, as a model carrying its mistake would
        assert parsed.steps[4].startswith(f"Subtract bar C: {step4} - 40 = ")
    accuracy = sum(parse_reasoning(c.text).answer == "3" for c in completions) / 600
    assert 0.55 < accuracy < 0.75  # 1 - (1 - 0.8 * 0.8) minus lucky cancellations


def test_wrong_operation_is_written_as_such():
    completions = solve(engine(observe_error_rate=0, arithmetic_error_rate=0, operation_error_rate=1.0), 5)
    for c in completions:
        assert "Combine them: 7 - 36 = -29." in c.text


def test_samples_differ_but_are_reproducible_for_a_seed():
    eng = engine(observe_error_rate=0.5)
    a = [c.text for c in solve(eng, 8, seed=3)]
    assert a == [c.text for c in solve(eng, 8, seed=3)]
    assert len(set(a)) > 1


def test_continues_a_prefix_one_step_at_a_time():
    eng = engine(observe_error_rate=0, arithmetic_error_rate=0, operation_error_rate=0)
    prefix = "Step 1: Count the red circles: there are 8.\n"  # a wrong count written earlier
    [c] = solve(eng, 1, assistant_prefix=prefix, stop=("\n",))
    assert c.text == "Step 2: The number in the blue box is 36." and c.finish_reason == "stop"
    [rest] = solve(eng, 1, assistant_prefix=prefix)
    assert parse_reasoning(prefix + rest.text).answer == "4"  # 8 + 36 - 40: the error carried on


def test_revision_fixes_the_flagged_step_at_the_configured_rate():
    eng = engine(observe_error_rate=0, arithmetic_error_rate=0, operation_error_rate=0,
                 revise_success_rate=0.6)
    wrong = PROBLEM.reference_solution.replace("there are 7", "there are 6").replace(
        "7 + 36 = 43", "6 + 36 = 42").replace("43 - 40 = 3", "42 - 40 = 2").replace("Answer: 3", "Answer: 2")
    turns = (*MESSAGES, {"role": "assistant", "content": wrong},
             {"role": "user", "content": "Step 1 is wrong: recount the red circles."})
    req = GenerationRequest(messages=turns, n=500, max_new_tokens=512, seed=4,
                            metadata={"problem_id": "toy-1"})
    fixed = sum(parse_reasoning(c.text).answer == "3" for c in eng.generate([req])[0].completions)
    assert abs(fixed / 500 - 0.6) < 0.07


def test_revision_keeps_steps_before_the_flagged_one():
    eng = engine(observe_error_rate=0, arithmetic_error_rate=0, operation_error_rate=0,
                 revise_success_rate=1.0)
    wrong = PROBLEM.reference_solution.replace("Bar C reaches 40", "Bar C reaches 30")
    turns = (*MESSAGES, {"role": "assistant", "content": wrong},
             {"role": "user", "content": "The third step misreads bar C (step 3)."})
    [c] = eng.generate([GenerationRequest(messages=turns, metadata={"problem_id": "toy-1"},
                                          max_new_tokens=512)])[0].completions
    assert c.text == PROBLEM.reference_solution


def test_unknown_problem_is_an_error_completion_not_a_crash():
    eng = engine()
    [result] = eng.generate([GenerationRequest(messages=MESSAGES, n=2, metadata={"problem_id": "x"})])
    assert [c.finish_reason for c in result.completions] == ["error", "error"]
    assert "synthetic problem" in result.completions[0].error


def test_max_new_tokens_truncates():
    [c] = engine().generate(
        [GenerationRequest(messages=MESSAGES, max_new_tokens=5, metadata={"problem_id": "toy-1"})]
    )[0].completions
    assert c.finish_reason == "length" and len(c.text) == 20 and c.completion_tokens == 5


@pytest.mark.parametrize(("text", "step"), [
    ("Step 3 is wrong", 3), ("error in step#2", 2), ("looks fine", None), ("STEP 10: bad", 10),
    ("Verdict: incorrect\nFirst wrong step: 4\nError type: counting\nExplanation: Step 2 is fine, step 4 "
     "miscounts.", 4),
    ("Verdict: correct\nExplanation: all steps check out", None),
])
def test_flagged_step(text, step):
    assert flagged_step(text) == step


def test_call_latency_waits_once_per_generate_call_and_changes_no_output(monkeypatch):
    import mmc_ray.engines.simulated as simulated

    waits = []
    monkeypatch.setattr(simulated.time, "sleep", waits.append)
    slow, fast = engine(call_latency_s=0.25, seed=3), engine(seed=3)
    assert [c.text for c in solve(slow, 4)] == [c.text for c in solve(fast, 4)]
    solve(slow, 2)
    assert waits == [0.25, 0.25]
