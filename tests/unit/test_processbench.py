"""ProcessBench F1 and VisualProcessBench step macro-F1 on hand-made cases whose figures are worked
out by hand in the comments."""

import pytest

from mmc_ray.eval.metrics import critic_metrics
from mmc_ray.eval.processbench import (
    Judged,
    prediction_from_verdict,
    processbench_f1,
    processbench_report,
    step_macro_f1,
    step_macro_f1_by_group,
    step_predictions_from_critique,
    step_predictions_from_scores,
)


def test_processbench_f1_is_the_harmonic_mean_of_the_two_accuracies():
    judged = [Judged(2, 2), Judged(3, 1), Judged(1, None), Judged(4, 4),  # erroneous: 2 of 4 exact
              Judged(-1, -1), Judged(-1, -1), Judged(-1, -1), Judged(-1, 2)]  # correct: 3 of 4
    got = processbench_f1(judged)
    assert (got.acc_err, got.acc_cor) == (0.5, 0.75)
    assert got.f1 == pytest.approx(2 * 0.5 * 0.75 / 1.25)  # 0.6
    assert (got.erroneous, got.correct) == (4, 4)


def test_a_critic_that_calls_everything_correct_scores_zero_not_half():
    got = processbench_f1([Judged(2, -1), Judged(-1, -1)])
    assert (got.acc_err, got.acc_cor, got.f1) == (0.0, 1.0, 0.0)


def test_f1_is_undefined_without_both_kinds_of_solution():
    assert processbench_f1([Judged(-1, -1)]).f1 is None
    assert processbench_f1([]).f1 is None


def test_the_report_gives_each_group_and_their_mean():
    judged = [Judged(1, 1, "counting"), Judged(-1, -1, "counting"),   # f1 1.0
              Judged(2, 3, "chart"), Judged(-1, -1, "chart"),         # acc_err 0: f1 0.0
              Judged(-1, -1, "geometry")]                             # no erroneous: undefined
    got = processbench_report(judged)
    assert got.groups["counting"].f1 == 1.0 and got.groups["chart"].f1 == 0.0
    assert got.groups["geometry"].f1 is None
    assert got.mean_group_f1 == 0.5  # undefined groups are left out of the mean
    assert got.overall.acc_err == 0.5 and got.overall.acc_cor == 1.0
    as_json = got.to_json()  # report.json: the overall figures at the top, groups beside them
    assert as_json["acc_err"] == 0.5 and as_json["groups"]["chart"]["f1"] == 0.0


def test_a_critique_becomes_a_prediction():
    assert prediction_from_verdict("correct", None) == -1
    assert prediction_from_verdict("incorrect", 3) == 3
    assert prediction_from_verdict(None, None) is None  # unparsed: matches no label
    assert prediction_from_verdict("incorrect", None) is None


def test_step_predictions_from_a_critique_and_from_scores():
    assert step_predictions_from_critique(4, "incorrect", 2) == [1, -1, None, None]
    assert step_predictions_from_critique(3, "correct", None) == [1, 1, 1]
    assert step_predictions_from_critique(3, None, None) == [None, None, None]
    assert step_predictions_from_critique(3, "incorrect", 7) == [None, None, None]  # out of range
    assert step_predictions_from_scores([0.9, 0.5, 0.49]) == [1, 1, -1]


def test_step_macro_f1_leaves_neutral_steps_out_and_counts_unjudged_ones_as_misses():
    solutions = [
        ([1, 1, -1, -1], [1, 1, -1, None]),  # the step after the flagged one is unjudged
        ([1, 0, 1], [1, -1, -1]),            # the neutral step's prediction does not count
    ]
    # correct class: TP 3 (steps 1, 2, and step 1 of the second), FP 0, FN 1 (last step of the second)
    #   F1 = 6 / (6 + 0 + 1) = 6/7
    # wrong class: TP 1, FP 1 (last step of the second), FN 1 (the unjudged step) -> 2 / 4 = 0.5
    got = step_macro_f1(solutions)
    assert got.f1_correct_steps == pytest.approx(6 / 7) and got.f1_wrong_steps == 0.5
    assert got.macro_f1 == pytest.approx((6 / 7 + 0.5) / 2) and got.steps == 6


def test_step_macro_f1_needs_a_prediction_per_step_and_both_classes():
    with pytest.raises(ValueError, match="3 step labels but 2 predictions"):
        step_macro_f1([([1, 1, -1], [1, 1])])
    assert step_macro_f1([([1, 1], [1, 1])]).macro_f1 is None  # no wrong step anywhere
    by_source = step_macro_f1_by_group([{"labels": [1, -1], "predicted": [1, -1], "group": "mathverse"},
                                        {"labels": [1, -1], "predicted": [-1, 1], "group": "geoqa"}])
    assert by_source.groups["mathverse"].macro_f1 == 1.0 and by_source.groups["geoqa"].macro_f1 == 0.0
    assert by_source.overall.macro_f1 == 0.5 and by_source.to_json()["groups"]["geoqa"]["macro_f1"] == 0.0


def test_refinement_records_report_processbench_f1():
    def row(correct, true_step, verdict, step):
        return {"critic_text": "x", "critic_parse_error": None, "critic_verdict": verdict,
                "critic_first_wrong_step": step, "correct": correct, "true_first_wrong_step": true_step}

    rows = [row(False, 2, "incorrect", 2), row(False, 1, "incorrect", 3),  # acc_err 1/2
            row(True, None, "correct", None), row(True, None, "incorrect", 1),  # acc_cor 1/2
            row(False, None, "correct", None)]  # wrong answer, unknown step: left out
    got = critic_metrics(rows)
    assert (got.processbench_acc_err, got.processbench_acc_cor, got.processbench_f1) == (0.5, 0.5, 0.5)
