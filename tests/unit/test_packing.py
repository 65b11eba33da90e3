import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmc_ray.train.packing import plan_packs, pooled_groups, token_budget_batches


@given(st.lists(st.integers(1, 100), max_size=60), st.integers(100, 300), st.none() | st.integers(0, 9))
def test_packs_cover_every_sample_once_within_budget(lengths, budget, seed):
    packs = plan_packs(lengths, budget, None if seed is None else random.Random(seed))
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= budget for p in packs)
    # first fit never leaves two packs both half empty or less, so it needs < 2 total / budget + 1
    assert len(packs) <= 2 * sum(lengths) / budget + 1


def test_packing_beats_padding_on_mixed_lengths():
    lengths = [10, 200, 15, 190, 30, 25, 180, 12]
    packs = plan_packs(lengths, 256)
    assert len(packs) == 3 == -(-sum(lengths) // 256)  # optimal: [10,200,15,30] [190,25,12] [180]
    assert sorted(map(len, packs)) == [1, 3, 4]


def test_shuffled_packs_mix_lengths():
    # Critiques of wrong paths are longer than those of right ones: packs of like length would be
    # packs of like verdict (first-fit decreasing made every step all-correct or all-incorrect).
    lengths = [100] * 60 + [150] * 60
    packs = plan_packs(lengths, 1000, random.Random(0))
    mixed = [p for p in packs if len({lengths[i] for i in p}) == 2]
    assert len(mixed) >= 0.8 * len(packs)
    assert len(packs) <= -(-sum(lengths) // 1000) + 1  # and packs stay nearly full
    assert plan_packs(lengths, 1000, random.Random(0)) == packs  # seeded: a resume replays it


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


def pack_at(budget):
    return lambda lengths: plan_packs(lengths, budget)


@given(st.lists(st.lists(st.integers(1, 100), max_size=8), max_size=30), st.integers(100, 300),
       st.integers(0, 4))
def test_pooled_groups_give_every_item_once_within_budget(chunks, budget, pool_steps):
    items = [(c, i, n) for c, chunk in enumerate(chunks) for i, n in enumerate(chunk)]
    chunked = [[item for item in items if item[0] == c] for c in range(len(chunks))]
    groups = list(pooled_groups(chunked, lambda item: item[2], pack_at(budget), pool_steps * budget))
    assert sorted(item for g in groups for item in g) == sorted(items)
    assert all(sum(item[2] for item in g) <= budget for g in groups)


def test_pooled_groups_fill_steps_from_small_chunks():
    chunks = [[60, 60]] * 20  # 2 items per chunk; 8 fit in a group of 500
    groups = list(pooled_groups(chunks, lambda n: n, pack_at(500), 1000))
    chunk_by_chunk = [g for c in chunks for g in pack_at(500)(c)]
    assert len(groups) == 5 and len(chunk_by_chunk) == 20  # chunk by chunk takes 4x the steps
    assert [sum(g) for g in groups] == [480] * 5
