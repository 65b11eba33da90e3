"""Judging MMC dataset rows with a critic (`critique.judge`) and the label-frequency baselines."""

from mmc_ray.critique.judge import judge_rows
from mmc_ray.critique.rule_annotator import rule_critique
from mmc_ray.engines.rule_critic import RuleCriticEngine
from mmc_ray.eval.metrics import critic_metrics, frequency_baselines
from mmc_ray.generation import Completion, GenerationResult
from mmc_ray.tasks.generator import generate_problems
from mmc_ray.tasks.solution import parse_reasoning


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


def test_the_oracle_critic_judges_every_row_right():
    rows = dataset_rows()
    assert {r["verdict"] for r in rows} == {"correct", "incorrect"}
    metrics = critic_metrics(judge_rows(RuleCriticEngine(), rows))
    assert metrics["critiques"] == len(rows) and metrics["verdict_accuracy"] == 1.0
    assert metrics["processbench_f1"] == 1.0 and metrics["step_recall"] == 1.0


def test_text_only_judging_sends_no_image_and_garbage_counts_as_unparsed():
    rows = dataset_rows(4)
    critic = Recording("no idea")
    judged = judge_rows(critic, rows, max_new_tokens=7, text_only=True)
    assert all(r.images == () and r.max_new_tokens == 7 and r.temperature == 0.0 for r in critic.requests)
    assert all(j["critic_verdict"] is None and j["critic_parse_error"] for j in judged)
    assert critic_metrics(judged)["parse_rate"] == 0.0
    with_images = Recording("Verdict: correct\nExplanation: fine.")
    judge_rows(with_images, rows)
    assert all(len(r.images) == 1 for r in with_images.requests)


def test_frequency_baselines_answer_from_the_training_labels():
    train = [{"verdict": "incorrect", "first_wrong_step": 2}] * 3 + [{"verdict": "correct", "first_wrong_step": None}]
    test = [{"verdict": "incorrect", "first_wrong_step": 2}, {"verdict": "incorrect", "first_wrong_step": 1},
            {"verdict": "correct", "first_wrong_step": None}]
    b = frequency_baselines(train, test)
    assert (b["majority_verdict"], b["most_common_step"]) == ("incorrect", 2)
    assert b["majority_verdict_accuracy"] == 2 / 3 and b["most_common_step_accuracy"] == 1 / 2
    assert b["constant_processbench_f1"] == 0.0  # "step 2" for all: acc_err 1/2, acc_cor 0
