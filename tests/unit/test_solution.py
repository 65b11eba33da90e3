import pytest

from mmc_ray.tasks.solution import (
    SolutionStep,
    apply_op,
    execute,
    format_number,
    parse_reasoning,
    render_reasoning,
    solution_text,
)

STEPS = (
    SolutionStep("count", "Count the red circles: there are {value}.", "3", label="red circles"),
    SolutionStep("count", "Count the blue squares: there are {value}.", "2", label="blue squares"),
    SolutionStep("add", "Add the counts: {0} + {1} = {value}.", "5", (0, 1)),
)


def test_execute_rederives_and_propagates_overrides():
    assert execute(STEPS) == ["3", "2", "5"]
    assert execute(STEPS, observed={0: "4"}) == ["4", "2", "6"]


def test_solution_text_round_trips_through_parser():
    text = solution_text(STEPS)
    assert text.splitlines()[0] == "Step 1: Count the red circles: there are 3."
    parsed = parse_reasoning(text)
    assert parsed.answer == "5"
    assert parsed.steps[2] == "Add the counts: 3 + 2 = 5."


@pytest.mark.parametrize(
    ("op", "values", "labels", "expected"),
    [
        ("add", ["1.5", "2"], ["", ""], "3.5"),
        ("sub", ["10", "3", "2"], ["", "", ""], "5"),
        ("mul", ["4", "2.5"], ["", ""], "10"),
        ("sum", ["1", "2", "3", "4"], [""] * 4, "10"),
        ("diff", ["3", "10"], ["", ""], "7"),
        ("max", ["3", "10"], ["", ""], "10"),
        ("min", ["3", "10"], ["", ""], "3"),
        ("argmax", ["5.1", "7.2", "6"], ["AB", "BC", "CA"], "BC"),
        ("argmin", ["5.1", "7.2", "6"], ["AB", "BC", "CA"], "AB"),
    ],
)
def test_apply_op(op, values, labels, expected):
    assert apply_op(op, values, labels) == expected


def test_format_number():
    assert format_number(3.0) == "3"
    assert format_number(-2.5) == "-2.5"
    assert format_number(1 / 3) == "0.33"
    with pytest.raises(ValueError):
        format_number(float("nan"))


def test_invalid_steps_rejected():
    with pytest.raises(ValueError, match="unknown step op"):
        SolutionStep("divide", "{value}", "1", (0,))
    with pytest.raises(ValueError, match="takes no inputs"):
        SolutionStep("count", "{value}", "1", (0,))
    with pytest.raises(ValueError, match="needs inputs"):
        SolutionStep("add", "{value}", "1")
    with pytest.raises(ValueError, match="reads a later step"):
        execute((SolutionStep("add", "{value}", "1", (0,)),))


def test_parser_is_tolerant_of_prose_and_wrapped_steps():
    text = "Let me think.\nStep 1: count\nthe dots: 4\nstep 2) add: 4 + 1 = 5\nFinal answer: 5\n"
    parsed = parse_reasoning(text)
    assert parsed.steps == ("count the dots: 4", "add: 4 + 1 = 5")
    assert parsed.answer == "5"
    assert parsed.extra == ("Let me think.",)
    assert parse_reasoning("").steps == () and parse_reasoning("").answer is None
    assert render_reasoning(["a"], "1") == "Step 1: a\nAnswer: 1"
