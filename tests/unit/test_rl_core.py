"""The critic-RL pure core: every reward × verdict × transition case, advantages, KL estimators."""

import itertools
import math

import pytest

from mmc_ray.critique.schema import Critique
from mmc_ray.rl.advantages import GroupAdvantages, group_advantages, grpo, kl_k1, kl_k3, rloo
from mmc_ray.rl.rewards import StepCredit, refine_reward, step_reward, verdict_reward

SAYS_CORRECT = Critique("correct", "fine")
SAYS_WRONG_AT = {k: Critique("incorrect", "no", k, "calculation") for k in (1, 2, 3, 4)}


@pytest.mark.parametrize(("critique", "correct", "reward"), [
    (SAYS_CORRECT, True, 1.0), (SAYS_CORRECT, False, -1.0),
    (SAYS_WRONG_AT[2], False, 1.0), (SAYS_WRONG_AT[2], True, -1.0),
    (None, True, -1.0), (None, False, -1.0),  # unparseable: never right
])
def test_stage_one_rewards_the_verdict(critique, correct, reward):
    assert verdict_reward(critique, correct) == reward


# (correct before, correct after) → reward, per kind: Critique-RL's released reward functions
TABLE = {
    "refine": {(False, False): 0.0, (False, True): 1.0, (True, False): 0.0, (True, True): 1.0},
    "delta": {(False, False): 0.0, (False, True): 1.0, (True, False): -1.0, (True, True): 0.0},
    "correct": {(False, False): 0.0, (False, True): 1.0, (True, False): 0.0, (True, True): 0.2},
}


@pytest.mark.parametrize(("kind", "before", "after"),
                         [(k, b, a) for k in TABLE for b, a in itertools.product((False, True), repeat=2)])
def test_stage_two_rewards_every_transition(kind, before, after):
    assert refine_reward(kind, before, after) == TABLE[kind][(before, after)]


@pytest.mark.parametrize(("kind", "before", "after", "critique"),
                         [(k, b, a, c) for k in TABLE for b, a in itertools.product((False, True), repeat=2)
                          for c in (SAYS_CORRECT, SAYS_WRONG_AT[1], None)])
def test_stage_two_with_the_verdict_term(kind, before, after, critique):
    right = critique is not None and (critique.verdict == "correct") == before
    expected = TABLE[kind][(before, after)] + 0.2 if right else -1.0  # a wrong verdict: a flat -1
    assert refine_reward(kind, before, after, critique, with_verdict=True) == pytest.approx(expected)


def test_an_unknown_refine_reward_is_refused():
    with pytest.raises(ValueError, match="refine reward"):
        refine_reward("bogus", True, True)


@pytest.mark.parametrize(("critique", "first_wrong", "reward"), [
    (SAYS_WRONG_AT[3], 3, 1.0),    # the exact step
    (SAYS_WRONG_AT[1], 3, 0.5),    # earlier: a revision from there still reaches the error
    (SAYS_WRONG_AT[4], 3, 0.0),    # later: the error would be kept
    (SAYS_CORRECT, 3, -1.0),       # a wrong path called correct
    (None, 3, -1.0),               # unparseable
    (SAYS_CORRECT, None, 1.0),     # a correct path called correct
    (SAYS_WRONG_AT[2], None, -1.0),
    (None, None, -1.0),
])
def test_the_step_reward_credits_the_first_wrong_step(critique, first_wrong, reward):
    assert step_reward(critique, first_wrong) == reward


def test_step_credit_is_configurable_and_bounded():
    credit = StepCredit(early_credit=0.25, late_credit=-0.5)
    assert step_reward(SAYS_WRONG_AT[1], 2, credit) == 0.25 and step_reward(SAYS_WRONG_AT[4], 2, credit) == -0.5
    with pytest.raises(ValueError, match="early_credit"):
        StepCredit(early_credit=2.0)


def test_leave_one_out_subtracts_the_mean_of_the_others():
    assert rloo([1.0, 0.0, 0.0, -1.0]) == pytest.approx((4 / 3, 0.0, 0.0, -4 / 3))
    assert sum(rloo([0.3, 0.9, -0.2])) == pytest.approx(0.0)  # they always sum to zero


def test_group_normalised_advantages_have_zero_mean_and_unit_std():
    values = grpo([1.0, 0.0, 0.0, -1.0, 1.0])
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    assert mean == pytest.approx(0.0) and std == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", ["rloo", "grpo"])
def test_tied_groups_are_dropped_and_counted(kind):
    result = group_advantages([[1.0, 1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]], kind)
    assert isinstance(result, GroupAdvantages) and (result.kept, result.dropped) == (1, 2)
    assert result.values[0] is None and result.values[2] is None
    assert result.values[1][0] > 0 > result.values[1][1]  # the better critique is pushed up


@pytest.mark.parametrize("rewards", [[1.0], []])
def test_a_group_of_one_has_no_baseline(rewards):
    with pytest.raises(ValueError):
        rloo(rewards)
    with pytest.raises(ValueError):
        group_advantages(["x"], "ppo")


def test_kl_estimators_on_floats_and_tensors_alike():
    torch = pytest.importorskip("torch")
    for log_ratio in (-2.0, -0.1, 0.0, 0.3, 1.5):
        assert kl_k1(log_ratio) == -log_ratio
        assert kl_k3(log_ratio) == pytest.approx(math.exp(log_ratio) - log_ratio - 1) and kl_k3(log_ratio) >= 0
    ratios = torch.tensor([-2.0, -0.1, 0.0, 0.3, 1.5])
    assert torch.allclose(kl_k3(ratios), torch.tensor([kl_k3(float(r)) for r in ratios]))
    # both estimate KL(p || p_ref) when tokens are drawn from p: here p = N(0,1), p_ref = N(0.5, 1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=gen)
    log_ratio = -0.5 * (x - 0.5) ** 2 + 0.5 * x ** 2  # log p_ref(x) - log p(x)
    exact = 0.5 * 0.5 ** 2
    assert kl_k1(log_ratio).mean().item() == pytest.approx(exact, abs=0.01)
    assert kl_k3(log_ratio).mean().item() == pytest.approx(exact, abs=0.01)
