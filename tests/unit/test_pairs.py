"""Divergent-pair mining on hand-built trees, scripted searches and trees searched with the simulated actor."""

import dataclasses

import pytest
from scripted_trees import drive, good_and_bad, judge

from mmc_ray.config import PairMiningConfig, SearchConfig, SimulatorConfig
from mmc_ray.engines.simulated import SimulatedActorEngine
from mmc_ray.mcts.pairs import (
    MinedPath,
    balanced_sample,
    correct_paths,
    mine_pairs,
    mine_pairs_from_row,
)
from mmc_ray.mcts.tree import Node, Rollout, SearchTree
from mmc_ray.stages.search import run_search, tree_row
from mmc_ray.tasks.scoring import answers_match
from mmc_ray.tasks.synthetic import generate_problems
from mmc_ray.workers.dispatch import LocalDispatcher

CFG = PairMiningConfig(no_error_per_problem=0)
OK = ("Answer: 5", "5", True)
BAD = ("Answer: 9", "9", False)


def tree(*specs):
    """Nodes from (parent, step, visits, value, terminal, answer, correct, rollouts) tuples; node 0 is the root.
    `invalid` nodes are written as step "" (as the search writes them)."""
    nodes = [Node(0, None, "", 0, visits=sum(s[2] for s in specs if s[0] == 0))]
    for parent, step, visits, value, terminal, answer, correct, rollouts in specs:
        node = Node(len(nodes), parent, step, nodes[parent].depth + 1, visits=visits, value_sum=value * visits,
                    terminal=terminal or not step, invalid=not step, answer=answer, correct=correct,
                    exhausted=terminal, rollouts=[Rollout(t, a, c, 3) for t, a, c in rollouts])
        nodes.append(node)
        nodes[parent].children.append(node.node_id)
    return nodes


def branch(parent, step, value, rollouts, visits=4):
    return (parent, step, visits, value, False, None, None, rollouts)


def leaf(parent, answer, correct, visits=1):
    return (parent, f"Answer: {answer}", visits, float(correct), True, answer, correct, [])


def split_tree():
    return tree(
        branch(0, "Step 1: count 3", 1.0, [(" \nStep 2: add 3 + 2 = 5\nAnswer: 5", "5", True)] * 4),
        branch(0, "Step 1: count 4", 0.0, [("Step 2: add 4 + 2 = 6\nAnswer: 6", "6", False)] * 4),
    )


def divergent(pairs):
    return [p for p in pairs if p.kind == "divergent"]


# -- divergent pairs ---------------------------------------------------------------------------


def test_a_clean_split_at_the_root_gives_one_pair_with_full_paths():
    [pair] = mine_pairs("p", split_tree(), CFG)
    assert pair.kind == "divergent" and pair.divergence_node == 0 and pair.divergence_depth == 0
    assert pair.correct == MinedPath(("count 3", "add 3 + 2 = 5"), "5", True)
    assert pair.wrong == MinedPath(("count 4", "add 4 + 2 = 6"), "6", False)
    assert pair.pair_id == "p:0:1:2" and pair.problem_id == "p"


def test_a_deeper_split_shares_its_prefix():
    nodes = tree(
        branch(0, "Step 1: count the bars: 3", 0.5, []),
        branch(1, "Step 2: read bar A: 10", 1.0, [("Step 3: sum is 15\nAnswer: 15", "15", True)]),
        branch(1, "Step 2: read bar A: 12", 0.0, [("Step 3: sum is 17\nAnswer: 17", "17", False)]),
    )
    [pair] = mine_pairs("q", nodes, CFG)
    assert (pair.divergence_node, pair.divergence_depth, pair.pair_id) == (1, 1, "q:1:2:3")
    assert pair.correct.steps == ("count the bars: 3", "read bar A: 10", "sum is 15")
    assert pair.wrong.steps == ("count the bars: 3", "read bar A: 12", "sum is 17")
    assert (pair.correct.answer, pair.wrong.answer) == ("15", "17")


@pytest.mark.parametrize(("good_value", "bad_value", "visits", "cfg", "expected"), [
    (0.7, 0.3, 2, CFG, 1),                                                # boundaries are inclusive
    (0.69, 0.3, 2, CFG, 0),                                               # good branch not good enough
    (0.7, 0.31, 2, CFG, 0),                                               # bad branch not bad enough
    (1.0, 0.0, 1, CFG, 0),                                                # under min_visits
    (1.0, 0.0, 4, dataclasses.replace(CFG, min_visits=5), 0),
    (0.9, 0.0, 4, dataclasses.replace(CFG, high_value=1.0, low_value=0.5), 0),
    (0.6, 0.4, 4, dataclasses.replace(CFG, high_value=0.6, low_value=0.4), 1),
])
def test_thresholds_and_min_visits(good_value, bad_value, visits, cfg, expected):
    nodes = tree(branch(0, "Step 1: a", good_value, [OK], visits=visits),
                 branch(0, "Step 1: b", bad_value, [BAD], visits=visits))
    assert len(mine_pairs("p", nodes, cfg)) == expected


def test_invalid_children_and_invalid_terminals_are_ignored():
    nodes = tree(branch(0, "Step 1: a", 1.0, [OK]), (0, "", 5, 0.0, True, None, False, []))
    assert mine_pairs("p", nodes, CFG) == []  # the only "bad" child is an invalid dead end

    nodes = tree(branch(0, "Step 1: a", 1.0, [OK]), branch(0, "Step 1: b", 0.0, [BAD]),
                 (2, "", 9, 0.0, True, None, False, []))  # an invalid node under the bad branch
    [pair] = mine_pairs("p", nodes, CFG)
    assert pair.wrong.steps == ("b",) and pair.wrong.answer == "9"


def test_no_divergence_means_no_divergent_pairs():
    all_good = tree(branch(0, "Step 1: a", 1.0, [OK] * 3), branch(0, "Step 1: b", 1.0, [OK] * 3))
    all_bad = tree(branch(0, "Step 1: a", 0.0, [BAD] * 3), branch(0, "Step 1: b", 0.0, [BAD] * 3))
    assert mine_pairs("p", all_good, CFG) == [] and mine_pairs("p", all_bad, CFG) == []
    assert mine_pairs("p", tree(branch(0, "Step 1: only", 1.0, [OK])), CFG) == []
    assert mine_pairs("p", [], CFG) == []


def test_a_side_without_a_matching_path_skips_the_pair():
    # the bad branch's value says wrong, but no finished wrong path is recorded under it
    nodes = tree(branch(0, "Step 1: a", 1.0, [OK]), branch(0, "Step 1: b", 0.0, [OK]))
    assert mine_pairs("p", nodes, CFG) == []


def test_siblings_that_are_the_same_step_are_no_divergence():
    nodes = tree(branch(0, "Step 1: count 3", 1.0, [OK]), branch(0, "step 1:  Count 3", 0.0, [BAD]))
    assert mine_pairs("p", nodes, CFG) == []


def test_representatives_prefer_terminals_and_answered_wrong_paths():
    nodes = tree(
        branch(0, "Step 1: good", 1.0, [("Step 2: r\nAnswer: 5", "5", True)]),
        branch(0, "Step 1: bad", 0.0, [("Step 2: rambling without end", None, False),
                                        ("Step 2: slip\nAnswer: 7", "7", False)]),
        leaf(1, "5", True),
        (2, "Step 2: cut off at max depth", 1, 0.0, True, None, False, []),  # terminal, but no answer
    )
    [pair] = mine_pairs("p", nodes, CFG)
    assert pair.correct == MinedPath(("good",), "5", True)  # the terminal, not the rollout
    assert pair.wrong == MinedPath(("bad", "slip"), "7", False)  # answered beats terminal-without-answer

    # with only unanswered wrong paths, the terminal one wins and keeps its cut-off step
    nodes[2].rollouts = [Rollout("Step 2: rambling", None, False, 3)]
    [pair] = mine_pairs("p", nodes, CFG)
    assert pair.wrong == MinedPath(("bad", "cut off at max depth"), None, False)


def test_representatives_then_prefer_visits_then_fewer_steps():
    nodes = tree(
        branch(0, "Step 1: good", 1.0, [OK], visits=6),
        branch(0, "Step 1: bad", 0.0, [("Step 2: x\nStep 3: y\nAnswer: 8", "8", False),
                                       ("Step 2: z\nAnswer: 9", "9", False)], visits=6),
        branch(1, "Step 2: quiet", 1.0, [("Step 3: more\nAnswer: 5", "5", True)], visits=2),
        branch(1, "Step 2: busy", 1.0, [("Step 3: more\nStep 4: more\nAnswer: 5", "5", True)], visits=3),
    )
    [pair] = mine_pairs("p", nodes, CFG)
    assert pair.correct.steps == ("good",)  # the rollout of the most-visited node (6 visits)
    assert pair.wrong == MinedPath(("bad", "z"), "9", False)  # same node: the shorter path
    nodes[1].rollouts = []
    [pair] = mine_pairs("p", nodes, CFG)
    assert pair.correct.steps == ("good", "busy", "more", "more")  # 3 visits beat 2 despite length


def test_rollout_text_is_parsed_into_steps():
    nodes = tree(
        branch(0, "Step 1: a", 1.0, [("Then add them: 3 + 2 = 5.\nStep 3: check it\nAnswer: 5", "5", True)]),
        branch(0, "Step 1: b", 0.0, [(" \nStep 2: x\n  continued\nAnswer: 6\nnoise after the answer", "6", False)]),
    )
    [pair] = mine_pairs("p", nodes, CFG)
    assert pair.correct.steps == ("a", "Then add them: 3 + 2 = 5.", "check it")  # unnumbered line kept
    assert pair.wrong.steps == ("b", "x continued")


def test_pair_ids_are_unique_and_stable():
    nodes = tree(branch(0, "Step 1: g", 1.0, [OK]), branch(0, "Step 1: b1", 0.0, [("Step 2: u\nAnswer: 1", "1", False)]),
                 branch(0, "Step 1: b2", 0.0, [("Step 2: v\nAnswer: 2", "2", False)]))
    cfg = PairMiningConfig(no_error_per_problem=3)
    first = mine_pairs("p", nodes, cfg, seed=3)
    assert [p.pair_id for p in first] == ["p:0:1:2", "p:0:1:3", "p:ok:n1r0"]
    assert mine_pairs("p", nodes, cfg, seed=3) == first
    assert len({p.pair_id for p in first}) == len(first)


def test_near_identical_wrong_paths_are_deduplicated():
    nodes = tree(branch(0, "Step 1: good", 1.0, [OK]),
                 branch(0, "Step 1: bad", 0.0, [("Step 2: x  Y\nAnswer: 9", "9", False)]),
                 branch(0, "Step 1: bad ", 0.0, []),
                 branch(0, "Step 1: other", 0.0, [("Step 2: x y\nAnswer: 9", "9", False)]),
                 branch(3, "Step 2: X y", 0.0, [(" Answer: 9", "9", False)]))
    pairs = mine_pairs("p", nodes, CFG)
    # node 3's only path (through node 5: "bad ", "X y", 9) normalises to node 2's ("bad", "x  Y", 9):
    # only the first is kept; node 4's ("other", "x y", 9) is a different path
    assert [p.pair_id for p in pairs] == ["p:0:1:2", "p:0:1:4"]


def deep_tree():
    """One good branch with four distinct bad siblings at depth 0, three bad siblings of a good branch at
    depth 1, and one split at depth 2."""
    ok, bad = [OK] * 2, [BAD] * 2
    return tree(
        branch(0, "Step 1: good", 1.0, ok, visits=2),                                               # 1
        *[branch(0, f"Step 1: bad{i}", 0.0, [(f"Step 2: x{i}\nAnswer: 9", "9", False)], visits=2)
          for i in range(3)],                                                                       # 2-4
        branch(0, "Step 1: dup", 0.0, [("Step 2: x0\nAnswer: 9", "9", False)], visits=2),  # 5: step 1 differs
        branch(1, "Step 2: fine", 1.0, ok, visits=2),                                               # 6
        branch(1, "Step 2: slip", 0.0, bad, visits=2),                                              # 7
        branch(1, "Step 2: trip", 0.0, [("Step 3: t\nAnswer: 3", "3", False)], visits=2),           # 8
        branch(1, "Step 2: fall", 0.0, [("Step 3: f\nAnswer: 2", "2", False)], visits=2),           # 9
        branch(6, "Step 3: sure", 1.0, ok, visits=2),                                               # 10
        branch(6, "Step 3: oops", 0.0, bad, visits=2),                                              # 11
    )


def test_per_depth_and_per_problem_caps_spread_across_depths():
    nodes = deep_tree()
    every = mine_pairs("p", nodes, PairMiningConfig(no_error_per_problem=0, max_pairs_per_depth=10,
                                                    max_pairs_per_problem=10))
    depths = [p.divergence_depth for p in every]
    assert sorted(depths) == [0, 0, 0, 0, 1, 1, 1, 2]
    assert depths[:3] == [0, 1, 2]  # round-robin order, shallow first
    assert len({p.pair_id for p in every}) == len(every)

    per_depth = mine_pairs("p", nodes, PairMiningConfig(no_error_per_problem=0, max_pairs_per_depth=2,
                                                        max_pairs_per_problem=10))
    assert [p.divergence_depth for p in per_depth] == [0, 1, 2, 0, 1]
    assert [p.pair_id for p in per_depth if p.divergence_depth == 0] == ["p:0:1:2", "p:0:1:3"]  # node order

    capped = mine_pairs("p", nodes, PairMiningConfig(no_error_per_problem=0, max_pairs_per_depth=2,
                                                     max_pairs_per_problem=3))
    assert [p.divergence_depth for p in capped] == [0, 1, 2]  # the deep split survives the cap
    one = mine_pairs("p", nodes, PairMiningConfig(no_error_per_problem=0, max_pairs_per_problem=1))
    assert [p.divergence_depth for p in one] == [0]


# -- no-error examples --------------------------------------------------------------------------


def test_no_error_examples_are_distinct_correct_paths():
    pairs = mine_pairs("p", split_tree(), PairMiningConfig(no_error_per_problem=1))
    [ok] = [p for p in pairs if p.kind == "no_error"]
    assert ok.wrong is None and (ok.divergence_node, ok.divergence_depth) == (-1, -1)
    assert ok.correct == MinedPath(("count 3", "add 3 + 2 = 5"), "5", True)
    assert ok.pair_id.startswith("p:ok:n1r")
    # four identical correct rollouts are one distinct path
    many = mine_pairs("p", split_tree(), PairMiningConfig(no_error_per_problem=5))
    assert len([p for p in many if p.kind == "no_error"]) == 1
    assert [p.kind for p in many] == ["divergent", "no_error"]


def test_no_error_sampling_is_seeded_and_capped():
    nodes = tree(*[branch(0, f"Step 1: way {i}", 1.0, [OK]) for i in range(8)], leaf(1, "5", True))
    cfg = PairMiningConfig(no_error_per_problem=3)
    picks = {seed: mine_pairs("p", nodes, cfg, seed=seed) for seed in range(6)}
    assert all(len(p) == 3 and all(x.kind == "no_error" and x.correct.correct for x in p) for p in picks.values())
    assert all(len({x.correct for x in p}) == 3 for p in picks.values())  # distinct paths
    assert mine_pairs("p", nodes, cfg, seed=2) == picks[2]
    assert len({tuple(x.pair_id for x in p) for p in picks.values()}) > 1  # the seed matters
    assert mine_pairs("p", nodes, PairMiningConfig(no_error_per_problem=0)) == []
    wrong_only = tree(branch(0, "Step 1: a", 0.0, [BAD]))
    assert mine_pairs("p", wrong_only, cfg) == []


def test_correct_paths_are_distinct_answered_and_best_ranked_first():
    nodes = tree(
        branch(0, "Step 1: count 3", 1.0, [(" \nStep 2: add 3 + 2 = 5\nAnswer: 5", "5", True)] * 3
               + [("Step 2: so it is 5", None, True)]),  # correct but unanswered: no solution to imitate
        branch(0, "Step 1: count 4", 0.0, [BAD]),
        branch(0, "Step 1: see 5", 1.0, [], visits=2),
        leaf(3, "5", True, visits=2),
    )
    assert correct_paths(nodes, 5) == [MinedPath(("see 5",), "5", True),  # a terminal node first
                                       MinedPath(("count 3", "add 3 + 2 = 5"), "5", True)]
    assert correct_paths(nodes, 1) == [MinedPath(("see 5",), "5", True)]
    assert correct_paths(nodes, 0) == []
    assert correct_paths(tree(branch(0, "Step 1: a", 0.0, [BAD])), 3) == []


# -- stored rows and scripted searches ------------------------------------------------------------


def searched(num_simulations=6):
    cfg = SearchConfig(num_simulations=num_simulations, expansion_width=2, rollouts_per_node=3, max_depth=6,
                       max_nodes=200, max_tokens=100_000, seed=0)
    return drive(SearchTree("p7", cfg, judge), lambda r: good_and_bad(r, finish_with_a_step=True))


def test_mine_pairs_from_row_matches_mining_the_live_tree():
    tree_ = searched()
    row = {"problem_id": "p7", "nodes": tree_.to_rows()}
    cfg = PairMiningConfig()
    from_row = mine_pairs_from_row(row, cfg, seed=4)
    assert from_row == mine_pairs("p7", tree_.nodes, cfg, seed=4)
    [pair] = divergent(from_row)
    assert pair.pair_id == "p7:0:1:2" and pair.divergence_depth == 0
    assert pair.correct.steps[0] == "good" and pair.correct.answer == "5"
    assert pair.wrong.steps[0] == "bad" and pair.wrong.answer == "4"
    assert mine_pairs_from_row(row, cfg, seed=4) == from_row


def test_pairs_from_simulated_search_are_real_divergences():
    problems = list(generate_problems(30, seed=13))
    by_id = {p.problem_id: p for p in problems}
    rows = []
    run_search(problems, LocalDispatcher(SimulatedActorEngine(SimulatorConfig(observe_error_rate=0.25))),
               SearchConfig(num_simulations=8, rollouts_per_node=3), lambda p, t: rows.append(tree_row(p, t)),
               progress=False)
    assert len(rows) == 30
    pairs = [pair for row in rows for pair in mine_pairs_from_row(row, PairMiningConfig())]
    found = divergent(pairs)
    assert len(found) >= 5 and len({p.problem_id for p in found}) >= 3
    for pair in pairs:
        problem = by_id[pair.problem_id]
        assert answers_match(pair.correct.answer, problem.answer, problem.answer_type, problem.choices)
        assert pair.correct.correct
    for pair in found:
        problem = by_id[pair.problem_id]
        assert not pair.wrong.correct
        assert not answers_match(pair.wrong.answer, problem.answer, problem.answer_type, problem.choices)
        d = pair.divergence_depth
        right, wrong = pair.correct.steps, pair.wrong.steps
        assert right[:d] == wrong[:d] and len(right) >= d and len(wrong) >= d
        if len(right) > d and len(wrong) > d:
            assert right[d] != wrong[d]
        else:  # a side answered right after the shared steps: the split is the answer itself
            assert pair.correct.answer != pair.wrong.answer
        assert not any(s.lower().startswith("step ") or s.lower().startswith("answer:") for s in right + wrong)
    assert len({p.pair_id for p in pairs}) == len(pairs)
    again = [pair for row in rows for pair in mine_pairs_from_row(row, PairMiningConfig())]
    assert again == pairs


# -- balanced_sample ------------------------------------------------------------------------------


def test_balanced_sample_round_robins_groups():
    items = [("b", i) for i in range(2)] + [("a", i) for i in range(5)] + [("c", 0)]
    out = balanced_sample(items, key=lambda x: x[0], limit=None)
    assert out == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("a", 2), ("a", 3), ("a", 4)]
    assert balanced_sample(items, key=lambda x: x[0], limit=4) == out[:4]
    assert balanced_sample(items, key=lambda x: x[0], limit=100) == out
    assert balanced_sample(items, key=lambda x: x[0], limit=0) == []
    assert balanced_sample([], key=lambda x: x, limit=3) == []


def test_balanced_sample_with_tuple_and_incomparable_keys():
    rows = [{"family": f, "depth": d, "i": i} for i, (f, d) in enumerate(
        [("bars", 0)] * 4 + [("bars", 2)] * 2 + [("count", 0)] * 3)]
    out = balanced_sample(rows, key=lambda r: (r["family"], r["depth"]), limit=3)
    assert [(r["family"], r["depth"]) for r in out] == [("bars", 0), ("bars", 2), ("count", 0)]
    mixed = [(None, 1), (2, 2), ("x", 3), (None, 4)]
    assert balanced_sample(mixed, key=lambda x: x[0], limit=None) == [(2, 2), (None, 1), ("x", 3), (None, 4)]


def test_config_validation():
    with pytest.raises(ValueError, match="low_value < high_value"):
        PairMiningConfig(high_value=0.3, low_value=0.5)
    with pytest.raises(ValueError, match="low_value < high_value"):
        PairMiningConfig(high_value=0.5, low_value=0.5)
    with pytest.raises(ValueError, match=">= 1"):
        dataclasses.replace(CFG, min_visits=0)
    with pytest.raises(ValueError, match=">= 1"):
        dataclasses.replace(CFG, max_pairs_per_depth=0)
    with pytest.raises(ValueError, match="no_error_per_problem"):
        dataclasses.replace(CFG, no_error_per_problem=-1)
