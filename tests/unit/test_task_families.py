import hashlib
import io
import os
import random
import subprocess
import sys
from statistics import mean

import pytest
from PIL import Image

from mmc_ray.tasks.families import FAMILIES, TaskInstance
from mmc_ray.tasks.problem import choices_text
from mmc_ray.tasks.solution import OBSERVE_OPS, execute, parse_reasoning, solution_text
from mmc_ray.tasks.synthetic import (
    DEFAULT_IMAGE_SIZE,
    generate_problem,
    generate_problems,
    problem_from_id,
    problem_scene,
)

FAMILY_NAMES = ("counting", "bar_chart", "arithmetic", "geometry")
DIFFICULTIES = (1, 2, 3, 4, 5)
SEEDS = range(8)


def test_registry_has_exactly_the_four_families():
    assert tuple(FAMILIES) == FAMILY_NAMES


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_answers_rederive_from_steps(family, difficulty):
    for seed in SEEDS:
        task = FAMILIES[family](random.Random(seed), difficulty)
        assert isinstance(task, TaskInstance)
        values = execute(task.steps)
        assert values[-1] == task.answer
        assert [s.value for s in task.steps] == values  # every stored step value is consistent
        assert task.steps[-1].value == task.answer
        assert any(s.op in OBSERVE_OPS for s in task.steps)
        for s in task.steps:
            if s.op in OBSERVE_OPS:
                assert s.label, "observation steps must name what they observe"
                assert "{value}" in s.template
        text = solution_text(task.steps)
        assert text.endswith(f"Answer: {task.answer}")
        parsed = parse_reasoning(text)
        assert parsed.answer == task.answer
        assert len(parsed.steps) == len(task.steps)
        # every step's text shows its value
        assert all(str(v) in line for v, line in zip(values, parsed.steps, strict=True))
        if task.answer_type == "choice":
            assert task.answer in task.choices
            assert task.question.endswith(choices_text(task.choices))
        else:
            assert task.answer_type == "integer"
            int(task.answer)


def test_step_texts_read_naturally():
    p = generate_problem("arithmetic", 3, 1)
    text = p.reference_solution
    assert "Read the number in the" in text and "×" in text
    for family in FAMILY_NAMES:
        lines = generate_problem(family, 3, 0).reference_solution.splitlines()
        assert lines[0].startswith("Step 1: ") and lines[-1].startswith("Answer: ")
        assert "{" not in "".join(lines)


def test_counting_question_matches_steps():
    for seed in SEEDS:
        p = generate_problem("counting", 4, seed)
        counted = [s.label for s in p.steps if s.op == "count"]
        assert all(name in p.question for name in counted)
        assert all(s.template.startswith(f"Count the {s.label}: ") for s in p.steps if s.op == "count")


def test_bar_chart_extremes_have_distinct_values():
    seen = 0
    for seed in range(60):
        p = generate_problem("bar_chart", 3, seed)
        if p.answer_type != "choice":
            continue
        seen += 1
        reads = [s.value for s in p.steps if s.op == "read_bar"]
        assert len(set(reads)) == len(reads) == len(p.choices)
        assert p.steps[-1].op in ("argmax", "argmin")
    assert seen > 5


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_bar_cues_compose_every_value(difficulty):
    for seed in range(10):
        _, facts, _, cues = problem_scene("bar_chart", difficulty, seed)
        cue = dict(cues)
        step = int(cue["gridline step"])
        labels = [cue[f"bar {i + 1} label"] for i in range(len(facts))]
        assert labels == [name for name, _ in facts]  # drawn left to right in fact order
        for name, value in facts:
            assert int(cue[f"{name} gridline"]) * step == int(value) > 0


def test_other_families_have_no_cues():
    for family in ("counting", "arithmetic", "geometry"):
        assert all(not problem_scene(family, 3, seed)[3] for seed in range(5))


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_geometry_winner_has_a_clear_margin(difficulty):
    low = {1: 0.25, 2: 0.20, 3: 0.15, 4: 0.10, 5: 0.05}[difficulty]
    for seed in range(20):
        p = generate_problem("geometry", difficulty, seed)
        last = p.steps[-1]
        values = sorted((float(p.steps[i].value) for i in last.inputs), reverse=last.op == "argmax")
        assert abs(values[0] - values[1]) / min(values[0], values[1]) >= low - 1e-9
        for s in p.steps:
            if s.op == "measure":
                assert s.value == str(round(float(s.value), 1)).removesuffix(".0")


def test_same_seed_same_problem_and_different_seeds_differ():
    for family in FAMILY_NAMES:
        a, b = generate_problem(family, 3, 5), generate_problem(family, 3, 5)
        assert a == b and a.image == b.image and a.steps == b.steps
        others = {generate_problem(family, 3, s).image for s in range(10)}
        assert len(others) >= 9
        questions = {(p.question, p.answer) for p in (generate_problem(family, 3, s) for s in range(10))}
        assert len(questions) >= 5


def test_global_random_state_is_not_used():
    random.seed(1)
    a = generate_problem("counting", 2, 3)
    random.seed(2)
    b = generate_problem("counting", 2, 3)
    assert a == b


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_steps_do_not_depend_on_image_size(family):
    for seed in range(3):
        small = generate_problem(family, 4, seed, image_size=112)
        big = generate_problem(family, 4, seed, image_size=448)
        assert (small.question, small.answer, small.steps, small.choices) == (
            big.question, big.answer, big.steps, big.choices)
        assert small.image != big.image


@pytest.mark.parametrize("size", [64, DEFAULT_IMAGE_SIZE, 320])
def test_images_are_pngs_of_the_requested_size(size):
    for family in FAMILY_NAMES:
        p = generate_problem(family, 2, 1, image_size=size)
        assert p.image[:8] == b"\x89PNG\r\n\x1a\n"
        img = Image.open(io.BytesIO(p.image))
        assert img.format == "PNG" and img.size == (size, size) and img.mode == "RGB"
        assert len(set(img.getdata())) > 2  # something was drawn


def test_problem_fields():
    p = generate_problem("bar_chart", 2, 42)
    assert p.problem_id == "bar_chart-d2-s42"
    assert (p.family, p.difficulty, p.seed, p.source) == ("bar_chart", 2, 42, "synthetic")
    assert p.reference_solution == solution_text(p.steps)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_problem_from_id_reproduces_problem(family):
    for d in (1, 5):
        p = generate_problem(family, d, 123)
        assert problem_from_id(p.problem_id) == p
    assert problem_from_id(f"{family}-d2-s7", image_size=96) == generate_problem(family, 2, 7, 96)


@pytest.mark.parametrize(
    ("problem_id", "match"),
    [
        ("counting-2-7", "expected '<family>-d<difficulty>-s<seed>'"),
        ("counting-d2-s-7", "expected"),
        ("counting-d2-s7 ", "expected"),
        ("", "expected"),
        ("chess-d2-s7", "unknown task family 'chess'; allowed: .*counting"),
        ("counting-d9-s7", "difficulty must be an integer in 1..5, got 9"),
        ("counting-d0-s7", "difficulty must be"),
    ],
)
def test_problem_from_id_rejects_bad_ids(problem_id, match):
    with pytest.raises(ValueError, match=match):
        problem_from_id(problem_id)


def test_bad_arguments_raise_helpful_errors():
    allowed = r"allowed: \['arithmetic', 'bar_chart', 'counting', 'geometry'\]"
    with pytest.raises(ValueError, match=rf"unknown task family 'charts'; {allowed}"):
        generate_problem("charts", 1, 0)
    with pytest.raises(ValueError, match=r"difficulty must be an integer in 1\.\.5, got 6"):
        generate_problem("counting", 6, 0)
    with pytest.raises(ValueError, match=r"difficulty must be an integer in 1\.\.5, got 2.0"):
        generate_problem("counting", 2.0, 0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        generate_problem("counting", 1, -1)
    with pytest.raises(ValueError, match="image_size"):
        generate_problem("counting", 1, 0, image_size=8)
    for family in FAMILY_NAMES:
        with pytest.raises(ValueError, match=r"difficulty must be an integer in 1\.\.5, got 0"):
            FAMILIES[family](random.Random(0), 0)
    # generate_problems validates before yielding anything
    with pytest.raises(ValueError, match="unknown task family 'tables'; allowed"):
        generate_problems(3, families=["counting", "tables"])
    with pytest.raises(ValueError, match="got 7"):
        generate_problems(3, difficulties=(1, 7))
    with pytest.raises(ValueError, match="must not be empty"):
        generate_problems(3, families=[])


def test_generate_problems_round_robin_unique_and_deterministic():
    problems = list(generate_problems(24, seed=3, difficulties=(1, 2, 3)))
    assert len(problems) == 24
    assert len({p.problem_id for p in problems}) == 24
    assert len({p.seed for p in problems}) == 24
    assert {p.family for p in problems} == set(FAMILY_NAMES)
    assert [p.family for p in problems[:4]] == list(FAMILY_NAMES)
    assert {(p.family, p.difficulty) for p in problems[:12]} == {
        (f, d) for f in FAMILY_NAMES for d in (1, 2, 3)}
    assert [p.problem_id for p in generate_problems(24, seed=3)] == [p.problem_id for p in problems]
    other_run = {p.problem_id for p in generate_problems(24, seed=4)}
    assert not other_run & {p.problem_id for p in problems}
    assert all(problem_from_id(p.problem_id) == p for p in problems[:4])


def test_generate_problems_respects_family_subset():
    problems = list(generate_problems(5, families=["geometry"], difficulties=(5,)))
    assert [p.family for p in problems] == ["geometry"] * 5
    assert all(p.difficulty == 5 for p in problems)
    assert list(generate_problems(0)) == []


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_difficulty_increases_work(family):
    def mean_steps(d):
        return mean(len(FAMILIES[family](random.Random(s), d).steps) for s in range(25))

    steps = [mean_steps(d) for d in DIFFICULTIES]
    assert steps[-1] > steps[0] + 1
    assert steps[2] >= steps[0]


def test_counting_difficulty_adds_objects():
    # Objects are not in the steps, so count distinct non-background colours' blobs indirectly:
    # harder images have more ink (more shapes).
    def ink(d):
        total = 0
        for s in range(10):
            img = FAMILIES["counting"](random.Random(s), d).image.convert("L")
            total += sum(1 for v in img.getdata() if v < 250)
        return total

    assert ink(5) > ink(1)


def _fingerprint(problem):
    return hashlib.sha256(problem.image + repr(problem.steps).encode()).hexdigest()


def test_import_is_light_and_problems_are_identical_across_processes():
    # A fresh interpreter with another hash seed: no ray/torch imported, and the same problems
    # (problem_from_id in another worker must rebuild exactly what this process generated).
    code = ("import sys, mmc_ray.tasks.synthetic as g, hashlib; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, "
            "[m for m in ('torch', 'ray') if m in sys.modules]; "
            "ps = [g.problem_from_id(f'{f}-d4-s11') for f in "
            "('counting', 'bar_chart', 'arithmetic', 'geometry')]; "
            "print(' '.join(hashlib.sha256(p.image + repr(p.steps).encode()).hexdigest() for p in ps))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 0, result.stderr
    here = [_fingerprint(generate_problem(f, 4, 11)) for f in FAMILY_NAMES]
    assert result.stdout.split() == here
