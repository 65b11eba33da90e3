import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmc_ray.train.packing import plan_packs, token_budget_batches


@given(st.lists(st.integers(1, 100), max_size=60), st.integers(100, 300))
def test_packs_cover_every_sample_once_within_budget(lengths, budget):
    packs = plan_packs(lengths, budget)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= budget for p in packs)
    # first-fit decreasing never needs more than 11/9 OPT + 1 bins; OPT >= total / budget
    assert len(packs) <= 11 / 9 * (sum(lengths) / budget) + 2


def test_packing_beats_padding_on_mixed_lengths():
    lengths = [10, 200, 15, 190, 30, 25, 180, 12]
    packs = plan_packs(lengths, 256)
    assert len(packs) == 3 == -(-sum(lengths) // 256)  # optimal here: [200,30,25] [190,15,12,10] [180]
    assert sorted(map(len, packs)) == [1, 3, 4]


def test_overlong_sample_is_an_error():
    with pytest.raises(ValueError, match=r"samples \[1\] are longer than the pack size 10"):
        plan_packs([5, 11], 10)


@given(st.lists(st.integers(1, 100), min_size=1, max_size=60), st.integers(50, 400))
def test_token_budget_batches(lengths, budget):
    batches = token_budget_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert padded <= budget or len(b) == 1  # an over-budget sample rides alone
