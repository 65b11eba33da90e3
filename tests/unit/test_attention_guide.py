"""Attention guidance (`train/attention_guide.py`): where each fact is drawn, which visual tokens that
covers, the targets of an example, their shift into a packed batch, and the loss of the guided head."""

import math

import pytest
import torch

from mmc_ray.tasks.synthetic import problem_scene
from mmc_ray.train.attention_guide import AttentionGuide, covered_tokens, example_targets, guiding
from mmc_ray.train.collate import collate_packed
from mmc_ray.train.examples import TrainExample

FAMILIES = ("counting", "bar_chart", "arithmetic", "geometry")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_fact_has_a_region_inside_the_image_exactly_when_it_is_drawn(family):
    for difficulty in range(1, 6):
        for seed in range(8):
            problem, facts, regions, _ = problem_scene(family, difficulty, seed)
            drawn = dict(regions)
            assert set(drawn) == {name for name, _ in facts}
            for name, value in facts:
                assert bool(drawn[name]) == (value != "0"), (problem.problem_id, name)
                for left, top, right, bottom in drawn[name]:
                    assert -0.05 <= left < right <= 1.05 and -0.05 <= top < bottom <= 1.05


def test_each_box_of_an_arithmetic_image_covers_the_tokens_under_its_border_colour():
    import io

    import numpy as np
    from PIL import Image

    from mmc_ray.tasks.families.drawing import PALETTE

    problem, _, regions, _ = problem_scene("arithmetic", 3, 4)
    pixels = np.asarray(Image.open(io.BytesIO(problem.image)).convert("RGB").resize((112, 112))).astype(int)
    for name, boxes in regions:
        ys, xs = np.nonzero(np.abs(pixels - np.array(PALETTE[name.split()[0]])).sum(-1) < 60)
        coloured = {(y // 28) * 4 + x // 28 for y, x in zip(ys, xs, strict=True)}
        assert coloured <= set(covered_tokens(boxes, 4, 4)), name


def test_covered_tokens_are_the_grid_cells_a_box_touches():
    assert covered_tokens([(0.0, 0.0, 0.2, 0.2)], 4, 4) == [0]
    assert covered_tokens([(0.3, 0.3, 0.55, 0.3)], 4, 4) == [5, 6]
    assert covered_tokens([(0.9, 0.9, 1.2, 1.2), (-0.1, 0.0, 0.1, 0.1)], 4, 4) == [0, 15]


def test_example_targets_point_from_the_token_before_each_value_to_its_region():
    image, text = 7, 1
    ids = [text, 5, *[image] * 4, text, text, 9, 9, text]  # a 2x2 token grid at positions 2..5
    targets = example_targets(ids, image, (1, 4, 4), 2,
                              [([8, 9], [(0.6, 0.6, 0.9, 0.9)]), ([10], [])])
    assert targets == ((7, (5,)),)  # the unboxed value is left unguided
    with pytest.raises(ValueError, match="image tokens"):
        example_targets(ids, image, (1, 6, 4), 2, [])


def test_collate_shifts_each_examples_targets_into_the_pack():
    class Rope:  # what collate_packed asks of the model for text-only examples
        @staticmethod
        def get_rope_index(input_ids, **_):
            return torch.arange(input_ids.shape[1]).expand(3, 1, -1), None

    model = type("Model", (), {"model": Rope()})()
    first = TrainExample("a", [1, 2, 3], [1, 2, 3], attention_targets=((1, (0,)),))
    second = TrainExample("b", [4, 5, 6, 7], [4, 5, 6, 7], attention_targets=((3, (1, 2)),))
    assert collate_packed([first, second], model, 99)["attention_targets"] == [(1, (0,)), (6, (4, 5))]
    assert "attention_targets" not in collate_packed([TrainExample("c", [1, 2], [1, 2])], model, 99)


def test_the_guided_heads_loss_is_minus_the_log_of_its_mass_on_the_targets():
    class Layer:
        layer_idx = 1

    query = torch.zeros(1, 2, 4, 8)
    key = torch.zeros(1, 1, 4, 8)
    key[0, 0, 1, 0] = 10.0  # position 3 of the first head looks at position 1 almost only
    query[0, 0, 3, 0] = 1.0
    guide = AttentionGuide(layer=1, head=0, targets=[(3, (1,)), (3, (0, 2))])
    with guiding(guide):
        guide.observe(Layer(), query, key, scaling=1.0, bounds=None)
        guide.observe(type("Other", (), {"layer_idx": 0})(), query, key, scaling=1.0, bounds=None)
    mass_on_1 = math.exp(10) / (math.exp(10) + 3)
    expected = -(math.log(mass_on_1) + math.log(2 / (math.exp(10) + 3))) / 2
    assert guide.loss().item() == pytest.approx(expected, rel=1e-5)
    assert len(guide.log_mass) == 2  # the other layer added nothing


def test_in_a_pack_a_value_attends_only_within_its_own_sample():
    class Layer:
        layer_idx = 0

    query = torch.zeros(1, 1, 4, 2)
    key = torch.zeros(1, 1, 4, 2)
    key[0, 0, 1, 0] = 5.0  # the first sample's token 1 would take the mass if it were visible
    query[0, 0, 3, 0] = 1.0
    guide = AttentionGuide(layer=0, head=0, targets=[(3, (2,))])
    guide.observe(Layer(), query, key, scaling=1.0, bounds=torch.tensor([0, 2, 4]))
    assert guide.loss().item() == pytest.approx(math.log(2))  # two visible keys (2, 3), equal scores
