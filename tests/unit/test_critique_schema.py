import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmc_ray.critique.schema import ERROR_TYPES, Critique, parse_critique

WRONG = Critique("incorrect", "Step 2 reads bar C as 30, but it reaches 40.", 2, "misreading",
                 "Read bar C against the gridlines: 40.")
SOUND = Critique("correct", "Every step matches the image and the arithmetic.")


@pytest.mark.parametrize("critique", [WRONG, SOUND, Critique("incorrect", "x", 7, "calculation")])
def test_round_trip(critique):
    assert parse_critique(critique.to_text()).critique == critique


@given(step=st.integers(1, 500), error_type=st.sampled_from(ERROR_TYPES),
       explanation=st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
                           min_size=1, max_size=80).filter(lambda s: s.strip() and ":" not in s))
def test_round_trip_property(step, error_type, explanation):
    # Surrounding whitespace and markdown emphasis (*, _) are stripped from values by design.
    explanation = explanation.strip().strip("*_").strip() or "x"
    c = Critique("incorrect", explanation, step, error_type)
    assert parse_critique(c.to_text()).critique == c


@pytest.mark.parametrize(
    "text",
    [
        "Let me check.\n" + WRONG.to_text() + "\nHope this helps!",
        WRONG.to_text().replace("Verdict:", "**Verdict:**").replace("First wrong step:", "**First wrong step**:"),
        WRONG.to_text().upper().replace("MISREADING", "misreading").replace("STEP 2 READS BAR C AS 30, BUT IT "
                                                                          "REACHES 40.", "x"),
        "- Verdict: incorrect\n- First wrong step: Step 2\n- Error type: perception\n- Explanation: bad read",
        "Verdict: Incorrect.\nFirst wrong step: 2 (the bar reading)\nError type: Misreading\nExplanation: a\nb",
        "```json\n" + json.dumps({"verdict": "incorrect", "first_wrong_step": 2, "error_type": "misread",
                                  "explanation": "bad read"}) + "\n```",
        "Verdict: incorrect\nFirst wrong step: 2\nExplanation: no error type given",
    ],
)
def test_tolerant_of_what_models_add(text):
    result = parse_critique(text, num_steps=5)
    assert result.ok, result.error
    assert result.critique.verdict == "incorrect" and result.critique.first_wrong_step == 2


def test_wrapped_explanation_and_last_key_wins():
    text = "Verdict: incorrect\nFirst wrong step: 1\nFirst wrong step: 3\nError type: counting\n" \
           "Explanation: the third step\ncounts five dots\n\nunrelated trailing prose"
    c = parse_critique(text).critique
    assert c.first_wrong_step == 3 and c.explanation == "the third step counts five dots"
    assert parse_critique("Verdict: correct\nExplanation: fine").critique == Critique("correct", "fine")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty output"),
        ("   \n  ", "empty output"),
        ("The answer is 42.", "no 'Verdict:' line"),
        ("Step 1: count the dots\nAnswer: 5", "no 'Verdict:' line"),
        ("\x00\xff garbage \x13", "no 'Verdict:' line"),
        ("Verdict: maybe\nExplanation: unsure", "neither correct nor incorrect"),
        ("Verdict:\nExplanation: x", "neither correct nor incorrect"),
        ("Verdict: incorrect", "no explanation"),
        ("Verdict: correct", "no explanation"),
        ("Verdict: correct\nExplanation:   ", "no explanation"),
        ("Verdict: incorrect\nExplanation: wrong somewhere", "without a step number"),
        ("Verdict: incorrect\nFirst wrong step: the second\nExplanation: x", "without a step number"),
        ("Verdict: incorrect\nFirst wrong step: \nExplanation: x", "without a step number"),
        ("Verdict: incorrect\nFirst wrong step: 0\nExplanation: x", "outside 1..5"),
        ("Verdict: incorrect\nFirst wrong step: 9\nExplanation: x", "outside 1..5"),
        ("Verdict: incorrect\nFirst wrong step: -2\nExplanation: x", "without a step number"),
        ("Verdict: incorrect\nFirst wrong step: 2\nError type: cosmic rays\nExplanation: x", "unknown error type"),
        ("{\"verdict\": \"incorrect\", \"explanation\": \"x\"}", "without a step number"),
        ("{\"verdict\": 3}", "neither correct nor incorrect"),
        ("{not json at all", "no 'Verdict:' line"),
        ("[\"verdict\", \"correct\"]", "no 'Verdict:' line"),
        ("Verdict: correct and incorrect\nExplanation: hedging", None),  # first word wins: correct
        ("verdict incorrect first wrong step 2", "no 'Verdict:' line"),
        ("Verdict: incorrect\nFirst wrong step: 99999\nExplanation: x", "outside 1..5"),
    ],
)
def test_rejects_what_is_not_a_critique_and_says_why(text, reason):
    result = parse_critique(text, num_steps=5)
    if reason is None:
        assert result.ok and result.critique.verdict == "correct"
        return
    assert not result.ok
    assert reason in result.error


def test_huge_garbage_is_rejected_quickly():
    import time

    start = time.perf_counter()
    assert not parse_critique("Explanation: x\n" * 50_000 + "z" * 1_000_000).ok
    assert time.perf_counter() - start < 5


def test_critique_validates_itself():
    with pytest.raises(ValueError):
        Critique("incorrect", "x")
    with pytest.raises(ValueError):
        Critique("incorrect", "x", 2, "not-a-type")
    with pytest.raises(ValueError):
        Critique("correct", "x", 2)
    with pytest.raises(ValueError):
        Critique("meh", "x")
