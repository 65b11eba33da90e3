"""Evaluation metrics on hand-made refinement records with answers worked out by hand, and the
report files written from stored records."""

import json

import pytest
from PIL import Image

from mmc_ray.eval.metrics import evaluate
from mmc_ray.eval.report import write_report
from mmc_ray.io import write_parquet_atomic
from mmc_ray.schemas import REFINE_SCHEMA


def row(pid, rnd, correct, *, family="f", true_step=None, verdict=None, step=None, final=False, stop="",
        parse_error=""):
    return {"problem_id": pid, "round": rnd, "family": family, "source": "synthetic", "text": "t",
            "num_steps": 3, "extracted_answer": "1", "correct": correct, "true_first_wrong_step": true_step,
            "temperature": 0.0, "answer_repeated": False, "actor_finish_reason": "stop", "actor_tokens": 10,
            "critic_text": "c" if verdict or parse_error else "", "critic_verdict": verdict,
            "critic_first_wrong_step": step, "critic_error_type": "calculation" if step else None,
            "critic_parse_error": parse_error, "critic_tokens": 4, "final": final, "stop_reason": stop}


# a: right at once, critic agrees.                       -> stays right
# b: wrong (step 2), critic flags 2, revision right.       -> wrong→right
# c: right but critic flags 1 (false alarm), revision wrong, keep_best picks round 0 back.
# d: wrong (step 1), critic flags 3, revision still wrong (step 1), critic says correct. -> stays wrong
# e: wrong (unknown step), critic output unparseable.      -> stays wrong
ROWS = [
    row("a", 0, True, verdict="correct", final=True, stop="critic verdict correct"),
    row("b", 0, False, true_step=2, verdict="incorrect", step=2),
    row("b", 1, True, verdict="correct", final=True, stop="critic verdict correct"),
    row("c", 0, True, family="g", verdict="incorrect", step=1, final=True),
    row("c", 1, False, family="g", true_step=3, verdict="incorrect", step=1, stop="round budget spent"),
    row("d", 0, False, family="g", true_step=1, verdict="incorrect", step=3),
    row("d", 1, False, family="g", true_step=1, verdict="correct", final=True, stop="critic verdict correct"),
    row("e", 0, False, parse_error="no 'Verdict:' line", final=True, stop="critic output unparseable"),
]


def test_accuracy_transitions_and_rounds():
    m = evaluate(ROWS)
    assert m.problems == 5
    assert m.single_pass_accuracy == pytest.approx(2 / 5)  # a, c
    # after round 1: a(final right) b(right) c(round 1 wrong) d(wrong) e(final wrong)
    assert m.accuracy_by_round == pytest.approx([2 / 5, 2 / 5])
    assert m.final_accuracy == pytest.approx(3 / 5)  # a, b, c (keep_best took round 0)
    assert (m.wrong_to_right, m.right_to_wrong) == (1, 0)
    assert m.mean_rounds == pytest.approx(3 / 5)
    assert m.stop_reasons == {"critic verdict correct": 3, "round budget spent": 1,
                                 "critic output unparseable": 1}
    assert m.actor_tokens == 80 and m.critic_tokens == 32


def test_critic_verdict_and_step_detection():
    c = evaluate(ROWS).critic
    assert c.critiques == 8 and c.parse_rate == pytest.approx(7 / 8)
    # verdict right: a0, b0, b1, c1, d0 = 5 of 8 (c0 false alarm, d1 wrong "correct", e0 unparsed)
    assert c.verdict_accuracy == pytest.approx(5 / 8)
    # step predictions among known rows: b0(2=2 TP), c0(1 vs none), c1(1 vs 3), d0(3 vs 1) -> 1 TP / 4
    # known wrong steps: b0, c1, d0, d1 -> recall 1/4; e0 (wrong, unknown step) is left out
    assert c.step_precision == pytest.approx(1 / 4)
    assert c.step_recall == pytest.approx(1 / 4)
    assert c.step_f1 == pytest.approx(1 / 4)
    assert c.step_unknown_wrong_answers == 1


def test_per_family_breakdown_adds_up():
    m = evaluate(ROWS)
    f, g = m.families["f"], m.families["g"]
    assert (f.problems, g.problems) == (3, 2)
    assert f.final_accuracy == pytest.approx(2 / 3) and g.final_accuracy == pytest.approx(1 / 2)
    assert f.wrong_to_right + g.wrong_to_right == m.wrong_to_right


def test_right_to_wrong_is_counted():
    rows = [row("x", 0, True, verdict="incorrect", step=1),
            row("x", 1, False, true_step=1, verdict="incorrect", step=1, final=True, stop="round budget spent")]
    m = evaluate(rows)
    assert (m.wrong_to_right, m.right_to_wrong) == (0, 1)


def test_inconsistent_records_are_rejected():
    with pytest.raises(ValueError, match="rounds"):
        evaluate([row("x", 1, True, final=True)])
    with pytest.raises(ValueError, match="exactly one final"):
        evaluate([row("x", 0, True), row("x", 1, True)])


def test_report_files_agree_with_the_records(tmp_path):
    write_parquet_atomic(ROWS, REFINE_SCHEMA, tmp_path / "refine" / "refine-00000.parquet")
    report = write_report(tmp_path / "refine", tmp_path / "report", {"title": "hand-made", "critic": "x"})
    data = json.loads(report.json.read_text())
    assert data["metrics"]["final_accuracy"] == pytest.approx(3 / 5)
    assert data["context"]["critic"] == "x"
    md = report.markdown.read_text()
    assert "Single pass 40.0%, after refinement 60.0% (1 wrong→right, 0 right→wrong)" in md
    assert "| g | 2 | 50.0% | 50.0% |" in md
    with Image.open(report.plot) as im:
        assert im.size == (720, 440) and im.format == "PNG"


def test_report_on_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no refine"):
        write_report(tmp_path, tmp_path / "report")
