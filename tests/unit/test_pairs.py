"""Divergent-pair mining on hand-built trees and on trees searched with the simulated actor."""

import dataclasses

import pytest

from mmc_ray.config import SearchConfig, SimulatorConfig
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.mcts.pairs import PairMiningConfig, balanced_sample, mine_pairs, mine_pairs_from_row
from mmc_ray.mcts.tree import Node, Rollout
from mmc_ray.pipeline.dispatch import LocalDispatcher
from mmc_ray.pipeline.search import run_search, tree_row
from mmc_ray.tasks.generator import generate_problems
from mmc_ray.tasks.scoring import answers_match

CFG = PairMiningConfig(no_error_per_problem=0)


def tree(*specs):
    """Nodes from (parent, step, visits, value, terminal, answer, correct, rollouts) tuples; node 0 is the root."""
    nodes = [Node(0, None, "", 0, visits=sum(s[2] for s in specs if s[0] == 0))]
    for parent, step, visits, value, terminal, answer, correct, rollouts in specs:
        node = Node(len(nodes), parent, step, nodes[parent].depth + 1, visits=visits, value_sum=value * visits,
                    terminal=terminal, answer=answer, correct=correct, exhausted=terminal,
                    rollouts=[Rollout(t, a, c, 3) for t, a, c in rollouts])
        nodes.append(node)
        nodes[parent].children.append(node.node_id)
    return nodes


def split_tree():
    return tree(
        (0, "Step 1: count 3", 4, 1.0, False, None, None, [("Step 2: add 3 + 2 = 5\nAnswer: 5", "5", True)] * 4),
        (0, "Step 1: count 4", 4, 0.0, False, None, None, [("Step 2: add 4 + 2 = 6\nAnswer: 6", "6", False)] * 4),
    )


def test_a_clean_split_gives_one_pair_with_full_paths():
    [pair] = mine_pairs("p", split_tree(), CFG)
    assert pair.kind == "divergent" and pair.divergence_node == 0 and pair.divergence_depth == 0
    assert pair.correct.steps == ("count 3", "add 3 + 2 = 5") and pair.correct.answer == "5"
    assert pair.wrong.steps == ("count 4", "add 4 + 2 = 6") and pair.wrong.answer == "6"
    assert pair.correct.correct and not pair.wrong.correct
    assert pair.pair_id == "p:0:1:2" and mine_pairs("p", split_tree(), CFG)[0] == pair


@pytest.mark.parametrize("cfg", [PairMiningConfig(no_error_per_problem=0, high_value=1.0, low_value=0.5),
                                 PairMiningConfig(no_error_per_problem=0, min_visits=5)])
def test_thresholds_and_visits(cfg):
    nodes = split_tree()
    nodes[1].value_sum = 0.9 * nodes[1].visits  # good branch now below high_value=1.0
    assert mine_pairs("p", nodes, cfg) == []


def test_invalid_children_are_ignored_and_no_divergence_means_no_pairs():
    nodes = split_tree()
    nodes[2].invalid = True
    assert mine_pairs("p", nodes, CFG) == []
    all_good = tree((0, "Step 1: a", 3, 1.0, False, None, None, [("Answer: 5", "5", True)] * 3),
                    (0, "Step 1: b", 3, 1.0, False, None, None, [("Answer: 5", "5", True)] * 3))
    assert mine_pairs("p", all_good, CFG) == []


def test_representatives_prefer_terminals_and_answered_wrong_paths():
    nodes = tree(
        (0, "Step 1: good", 4, 1.0, False, None, None, [("Step 2: r\nAnswer: 5", "5", True)]),
        (0, "Step 1: bad", 4, 0.0, False, None, None, [("Step 2: rambling without end", None, False),
                                                       ("Step 2: slip\nAnswer: 7", "7", False)]),
        (1, "Answer: 5", 1, 1.0, True, "5", True, []),
    )
    [pair] = mine_pairs("p", nodes, CFG)
    assert pair.correct.steps == ("good",) and pair.correct.answer == "5"  # the terminal, not the rollout
    assert pair.wrong.answer == "7"  # an answered wrong path over an unfinished one


def test_dedupe_caps_and_depth_spread():
    rollout_ok = [("Answer: 5", "5", True)] * 2
    rollout_bad = [("Answer: 9", "9", False)] * 2
    specs = [(0, "Step 1: good", 2, 1.0, False, None, None, rollout_ok)]
    specs += [(0, f"Step 1: bad{i}", 2, 0.0, False, None, None, [(f"Step 2: x{i}\nAnswer: 9", "9", False)] * 2)
              for i in range(3)]
    specs += [(0, "Step 1: dup", 2, 0.0, False, None, None, [("Step 2: x0\nAnswer: 9", "9", False)] * 2)]
    nodes = tree(*specs)
    # deeper divergence under "good": node 1 → good child / bad child
    for step, value, rollouts in (("Step 2: fine", 1.0, rollout_ok), ("Step 2: slip", 0.0, rollout_bad)):
        node = Node(len(nodes), 1, step, 2, visits=2, value_sum=2 * value, rollouts=[Rollout(*r, 3) for r in rollouts])
        nodes.append(node)
        nodes[1].children.append(node.node_id)
    every = mine_pairs("p", nodes, PairMiningConfig(no_error_per_problem=0, max_pairs_per_depth=10, max_pairs_per_problem=10))
    depth0 = [p for p in every if p.divergence_depth == 0]
    assert len(depth0) == 4
    capped = mine_pairs("p", nodes, PairMiningConfig(no_error_per_problem=0, max_pairs_per_depth=2, max_pairs_per_problem=3))
    depths = [p.divergence_depth for p in capped]
    assert len(capped) == 3 and depths.count(0) == 2 and depths.count(1) == 1
    assert len({p.pair_id for p in every}) == len(every)


def test_near_identical_wrong_paths_are_deduplicated():
    same = [("Step 2: x\nAnswer: 9", "9", False)] * 2
    nodes = tree((0, "Step 1: good", 2, 1.0, False, None, None, [("Answer: 5", "5", True)] * 2),
                 (0, "Step 1: bad", 2, 0.0, False, None, None, same))
    node = Node(3, 0, "step 1:   BAD", 1, visits=2, value_sum=0.0, rollouts=[Rollout(*same[0], 3)] * 2)
    nodes.append(node)
    nodes[0].children.append(3)
    assert len(mine_pairs("p", nodes, CFG)) == 1


def test_no_error_examples():
    pairs = mine_pairs("p", split_tree(), PairMiningConfig(no_error_per_problem=1))
    ok = [p for p in pairs if p.kind == "no_error"]
    assert len(ok) == 1 and ok[0].wrong is None and ok[0].correct.correct and ok[0].correct.answer == "5"


def test_balanced_sample_round_robins_groups():
    items = [("a", i) for i in range(5)] + [("b", i) for i in range(2)] + [("c", 0)]
    out = balanced_sample(items, key=lambda x: x[0], limit=None)
    assert [k for k, _ in out[:3]] == ["a", "b", "c"] and sorted(out) == sorted(items)
    assert [k for k, _ in balanced_sample(items, key=lambda x: x[0], limit=4)] == ["a", "b", "c", "a"]
    assert balanced_sample([], key=lambda x: x, limit=3) == []


def test_pairs_from_simulated_search_are_real_divergences():
    problems = list(generate_problems(30, seed=13))
    by_id = {p.problem_id: p for p in problems}
    rows = []
    run_search(problems, LocalDispatcher(SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.25))),
               SearchConfig(num_simulations=8, rollouts_per_node=3), lambda p, t: rows.append(tree_row(p, t)),
               progress=False)
    pairs = [pair for row in rows for pair in mine_pairs_from_row(row, PairMiningConfig())]
    divergent = [p for p in pairs if p.kind == "divergent"]
    assert len(divergent) >= 5
    for pair in divergent:
        problem = by_id[pair.problem_id]
        assert answers_match(pair.correct.answer, problem.answer, problem.answer_type, problem.choices)
        assert not answers_match(pair.wrong.answer, problem.answer, problem.answer_type, problem.choices)
        d = pair.divergence_depth
        assert pair.correct.steps[:d] == pair.wrong.steps[:d]
        assert pair.correct.steps[d] != pair.wrong.steps[d]
    assert len({p.pair_id for p in pairs}) == len(pairs)


def test_config_validation():
    with pytest.raises(ValueError):
        PairMiningConfig(high_value=0.3, low_value=0.5)
    with pytest.raises(ValueError):
        dataclasses.replace(CFG, min_visits=0)
