"""A user's own problems in the pipeline (`--problems`, `--eval-problems`): fresh slices per round,
held-out ids never searched, the rule annotator refused without step programs, the answer oracle."""

import dataclasses

import pytest
from user_data import write_user_jsonl

from mmc_ray.config import Config, EngineConfig
from mmc_ray.critique.prompts import critic_messages
from mmc_ray.critique.schema import parse_critique
from mmc_ray.engine_protocol import GenerationRequest
from mmc_ray.engines.factory import build_engine
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.errors import BadInput
from mmc_ray.orchestration.flywheel import UserProblems, _oracle_kind
from mmc_ray.tasks.benchmark import load_problem_file
from mmc_ray.tasks.prompts import solve_messages
from mmc_ray.tasks.synthetic import generate_problems


def mc(cfg: Config, **pipeline) -> Config:
    return dataclasses.replace(cfg, annotate=dataclasses.replace(cfg.annotate, method="mc"),
                               pipeline=dataclasses.replace(cfg.pipeline, **pipeline))


@pytest.fixture
def files(tmp_path):
    return write_user_jsonl(tmp_path / "train.jsonl", 10, seed=1), write_user_jsonl(tmp_path / "eval.jsonl", 4, 99)


def test_each_round_searches_the_next_slice_and_runs_out_with_a_clear_error(files):
    cfg = mc(Config(), problems_per_round=4)
    user = UserProblems.load(cfg, *files)
    assert not any(p.steps for p in user.train) and len(user.eval) == 4
    rounds = [[p.problem_id for p in user.round_slice(cfg, r)] for r in (1, 2, 3)]
    assert [len(r) for r in rounds] == [4, 4, 2]
    assert [i for r in rounds for i in r] == [p.problem_id for p in user.train]  # each once, in order
    assert rounds[0][0].startswith("train-counting-")  # the file's name, then the row id
    with pytest.raises(BadInput, match=r"10 problems; round 4 would start at problem 13"):
        user.round_slice(cfg, 4)


def test_held_out_problems_shared_with_training_are_refused(files, tmp_path):
    same = write_user_jsonl(tmp_path / "again" / "train.jsonl", 2, seed=1)  # same file name: same ids
    with pytest.raises(BadInput, match=r"share 2 problem id\(s\)"):
        UserProblems.load(mc(Config()), files[0], same)


def test_the_rule_annotator_is_refused_for_problems_without_step_programs(files):
    with pytest.raises(BadInput, match=r"annotate\.method=mc .* annotate\.method=llm"):
        UserProblems.load(Config(), *files)


def test_the_simulated_actor_still_solves_exported_problems_from_their_ids(files):
    [problem] = load_problem_file(files[1])[:1]
    request = GenerationRequest(messages=solve_messages(problem), images=problem.images, max_new_tokens=256,
                                metadata={"problem_id": problem.problem_id})
    [result] = SimulatedActorEngine(dataclasses.replace(Config().actor.simulator, observe_error_rate=0.0,
                                                        arithmetic_error_rate=0.0, operation_error_rate=0.0)
                                    ).generate([request])
    assert result.completions[0].finish_reason != "error"
    assert result.completions[0].text.strip().endswith(problem.answer)


def test_the_answer_oracle_judges_final_answers_of_problems_from_a_file(files):
    problems = load_problem_file(files[1])
    assert _oracle_kind(problems) == "answer" and _oracle_kind(list(generate_problems(2, seed=3))) == "rule"
    oracle = build_engine(EngineConfig(kind="rule", problems=str(files[1])))
    problem = problems[0]
    right = GenerationRequest(messages=critic_messages(problem, ["Look at the image."], problem.answer),
                              images=problem.images, metadata={"problem_id": problem.problem_id})
    wrong = dataclasses.replace(right, messages=critic_messages(problem, ["Look.", "Guess."], "no such answer"))
    verdicts = [parse_critique(r.completions[0].text).critique for r in oracle.generate([right, wrong])]
    assert verdicts[0].verdict == "correct"
    assert (verdicts[1].verdict, verdicts[1].first_wrong_step) == ("incorrect", 2)  # the last step: it knows no more
    unknown = dataclasses.replace(right, metadata={"problem_id": "not-in-the-file"})
    assert oracle.generate([unknown])[0].completions[0].finish_reason == "error"
