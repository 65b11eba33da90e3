"""Judging MMC dataset rows with a critic (`stages.critic_bench`: the rows as labelled solutions, the
critic asked as it was trained) and the label-frequency baselines."""

from mmc_ray.critique.prompts import solution_in_critic_prompt
from mmc_ray.critique.rule_annotator import rule_critique
from mmc_ray.engine_protocol import Completion, GenerationResult, message_text
from mmc_ray.engines.rule_critic import RuleCriticEngine
from mmc_ray.eval.metrics import frequency_baselines
from mmc_ray.eval.processbench import critic_bench_report
from mmc_ray.stages.critic_bench import critique_solution, judge
from mmc_ray.tasks.solution import parse_reasoning
from mmc_ray.tasks.synthetic import generate_problems


def dataset_rows(n=8):
    """Half the paths right, half with their first step misread (as CRITIQUE_SCHEMA rows)."""
    rows = []
    for i, p in enumerate(generate_problems(n, seed=5)):
        steps = list(parse_reasoning(p.reference_solution).steps)
        if i % 2:
            steps[0] = steps[0].replace(p.steps[0].value, str(int(float(p.steps[0].value)) + 1), 1)
        critique = rule_critique(p, steps, p.answer, key=p.problem_id)
        rows.append({"pair_id": f"{p.problem_id}:x", **p.to_row(), "path_steps": steps, "path_answer": p.answer,
                     "verdict": critique.verdict, "first_wrong_step": critique.first_wrong_step,
                     "critique_text": critique.to_text()})
    return rows


class Recording:
    def __init__(self, text):
        self.text, self.requests = text, []

    def generate(self, requests):
        self.requests += requests
        return [GenerationResult((Completion(self.text, "stop", 3),), 10) for _ in requests]


def solutions(rows):
    return [critique_solution(r) for r in rows]


def test_the_oracle_critic_judges_every_row_right():
    rows = dataset_rows()
    assert {r["verdict"] for r in rows} == {"correct", "incorrect"}
    report = critic_bench_report(judge(solutions(rows), RuleCriticEngine(), 160, progress=False))
    assert report.solutions == len(rows) and report.verdict_accuracy == 1.0
    assert report.processbench.overall.f1 == 1.0 and report.processbench.overall.acc_err == 1.0


def test_the_critic_is_asked_with_the_paths_answer_line_as_in_training():
    rows = dataset_rows(2)
    rows[1]["path_answer"] = None
    critic = Recording("Verdict: correct\nExplanation: fine.")
    judge(solutions(rows), critic, 16, progress=False)
    answers = [solution_in_critic_prompt(message_text(r.messages[-1]))[1] for r in critic.requests]
    assert answers == [rows[0]["path_answer"], None]


def test_text_only_judging_sends_no_image_and_garbage_counts_as_unparsed():
    rows = dataset_rows(4)
    critic = Recording("no idea")
    judged = judge(solutions(rows), critic, max_new_tokens=7, progress=False, text_only=True)
    assert all(r.images == () and r.max_new_tokens == 7 and r.temperature == 0.0 for r in critic.requests)
    assert all(j["verdict"] is None for j in judged)
    report = critic_bench_report(judged)
    assert report.parse_rate == 0.0 and report.verdict_accuracy == 0.0
    with_images = Recording("Verdict: correct\nExplanation: fine.")
    judge(solutions(rows), with_images, 16, progress=False)
    assert all(len(r.images) == 1 for r in with_images.requests)


def test_a_row_with_a_wrong_step_out_of_range_is_skipped_with_its_id():
    row = dict(dataset_rows(1)[0], verdict="incorrect", first_wrong_step=99)
    skipped = critique_solution(row)
    assert skipped.row_id == row["pair_id"] and "out of range" in skipped.reason


def test_frequency_baselines_answer_from_the_training_labels():
    train = [{"verdict": "incorrect", "first_wrong_step": 2}] * 3 + [{"verdict": "correct", "first_wrong_step": None}]
    test = [{"verdict": "incorrect", "first_wrong_step": 2}, {"verdict": "incorrect", "first_wrong_step": 1},
            {"verdict": "correct", "first_wrong_step": None}]
    b = frequency_baselines(train, test)
    assert (b["majority_verdict"], b["most_common_step"]) == ("incorrect", 2)
    assert b["majority_verdict_accuracy"] == 2 / 3 and b["most_common_step_accuracy"] == 1 / 2
    assert b["constant_processbench_f1"] == 0.0  # "step 2" for all: acc_err 1/2, acc_cor 0
