"""Facts and dense descriptions: the ground truth the tiny VLM learns to see from (issue #36)."""

import random

import pytest

from mmc_ray.tasks.descriptions import description
from mmc_ray.tasks.families import FAMILIES
from mmc_ray.tasks.solution import OBSERVE_OPS
from mmc_ray.tasks.synthetic import generate_problem, problem_with_facts

FAMILY_NAMES = tuple(FAMILIES)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("difficulty", (1, 3, 5))
def test_every_observed_value_is_a_fact_of_its_image(family, difficulty):
    for seed in range(6):
        problem, facts = problem_with_facts(family, difficulty, seed)
        shown = dict(facts)
        assert len(shown) == len(facts), "fact names are unique per image"
        observed = [s for s in problem.steps if s.op in OBSERVE_OPS]
        assert observed
        for step in observed:
            assert shown[step.label] == step.value


def test_facts_cover_more_than_the_question_asks():
    # Distractor boxes, unasked counts: a description teaches what the question leaves out.
    richer = 0
    for seed in range(20):
        problem, facts = problem_with_facts("arithmetic", 2, seed)
        richer += len(facts) > sum(s.op in OBSERVE_OPS for s in problem.steps)
    assert richer > 0


def test_counting_facts_count_what_is_drawn_zero_included():
    _, facts = problem_with_facts("counting", 3, 4)
    shown = dict(facts)
    assert "0" in shown.values()  # six colours x shapes: some group is always absent
    for colour in ("red", "blue"):
        per_shape = sum(int(shown[f"{colour} {shape}"]) for shape in ("circles", "squares", "triangles"))
        assert int(shown[f"{colour} shapes"]) == per_shape


def test_facts_leave_the_problem_unchanged():
    problem, _ = problem_with_facts("bar_chart", 2, 9)
    assert problem == generate_problem("bar_chart", 2, 9)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_description_says_every_nonzero_fact_in_the_steps_own_words(family):
    problem, facts = problem_with_facts(family, 3, 1)
    lines = description(problem, facts, random.Random(0)).split("\n")
    nonzero = [(n, v) for n, v in facts if v != "0"]
    assert len(lines) == len(nonzero)
    step_sentences = {s.template.format(value=s.value) for s in problem.steps if s.op in OBSERVE_OPS}
    assert step_sentences <= set(lines)  # what a solution writes is what the description says


def test_description_order_is_shuffled_by_the_rng_only():
    problem, facts = problem_with_facts("counting", 4, 2)
    a = description(problem, facts, random.Random(1))
    assert a == description(problem, facts, random.Random(1))
    assert {description(problem, facts, random.Random(s)) for s in range(5)} != {a}
    assert sorted(a.split("\n")) == sorted(description(problem, facts, random.Random(2)).split("\n"))
