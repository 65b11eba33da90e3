"""Best-of-N selection by the critic's scores and majority vote, on hand-made candidates whose
figures are worked out by hand."""

import pytest

from mmc_ray.eval.best_of_n import Candidate, accuracy_vs_n, majority_vote, pick_best


def c(answer, correct, p, steps=()):
    return Candidate(answer, correct, p, tuple(steps))


def test_the_best_scored_candidate_is_picked_by_either_score():
    candidates = [c("3", False, 0.9, [0.9, 0.1]), c("4", True, 0.6, [0.8, 0.7]), c("5", False, 0.2, [0.2])]
    assert pick_best(candidates, "p_correct") == 0
    assert pick_best(candidates, "min_step") == 1  # its weakest step is the strongest
    assert pick_best([c("3", False, 0.5), c("4", True, 0.5)]) == 0  # ties: the first sampled


def test_majority_vote_keeps_the_most_frequent_answer_and_ignores_unanswered():
    assert majority_vote([c("3", False, 0), c("4", True, 0), c("4", True, 0)]) == 1
    assert majority_vote([c(None, False, 0), c(None, False, 0), c("7", True, 0)]) == 2
    assert majority_vote([c(None, False, 0)]) == 0
    assert majority_vote([c("3", False, 0), c("4", True, 0)]) == 0  # a tie: the first


def test_accuracy_vs_n_on_prefixes_of_the_same_samples():
    problems = [
        [c("1", False, 0.2), c("2", True, 0.9), c("2", True, 0.8), c("1", False, 0.1)],  # best-of-2 finds it
        [c("5", True, 0.4), c("6", False, 0.7), c("6", False, 0.6), c("6", False, 0.5)],  # the critic is fooled
    ]
    got = accuracy_vs_n(problems, ns=(1, 2, 4))
    assert got["n"] == [1, 2, 4]
    assert got["best_of_n"] == [0.5, 0.5, 0.5]        # N=1: p1 wrong, p2 right; N>=2: p1 right, p2 wrong
    # N=1 and N=2: p1's first sample "1" (a tie at N=2), p2's "5"; N=4: p1 ties 1/2 -> "1", p2 "6" x3
    assert got["majority_vote"] == [0.5, 0.5, 0.0]
    assert got["any_correct"] == [0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="N up to 8 needs that many samples"):
        accuracy_vs_n(problems)


def test_default_sample_counts_are_powers_of_two_up_to_the_fewest_samples():
    from mmc_ray.eval.best_of_n import sample_counts

    rows = [{"problem_id": "a"}] * 6 + [{"problem_id": "b"}] * 8
    assert sample_counts(rows) == [1, 2, 4, 6]
    assert sample_counts([{"problem_id": "a"}] * 8) == [1, 2, 4, 8]
