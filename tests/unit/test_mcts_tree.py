"""The pure MCTS core, driven by scripted responders (no model, no Ray)."""

import dataclasses
import random

import pytest
from scripted_trees import drive, good_and_bad, judge

from mmc_ray.config import SearchConfig
from mmc_ray.mcts.tree import (
    Generation,
    SearchResult,
    SearchTree,
    nodes_from_rows,
    segment_step,
)

CFG = SearchConfig(num_simulations=50, expansion_width=2, rollouts_per_node=4, max_depth=4,
                   max_nodes=100, max_tokens=100_000, seed=0)





def test_values_are_fractions_of_correct_rollouts_and_back_up():
    tree = SearchTree("p", dataclasses.replace(CFG, num_simulations=1), judge)
    drive(tree, good_and_bad)
    root, good, bad = tree.nodes[0], tree.nodes[1], tree.nodes[2]
    assert (good.step, bad.step) == ("Step 1: good", "Step 1: bad")
    assert (good.visits, good.value) == (4, 1.0)
    assert (bad.visits, bad.value) == (4, 0.0)
    assert (root.visits, root.value) == (8, 0.5)
    assert all(r.correct for r in good.rollouts) and not any(r.correct for r in bad.rollouts)
    assert tree.simulations == 1 and tree.counts["rollouts"] == 8


@pytest.mark.parametrize("selection", ["puct", "uct"])
def test_selection_prefers_the_valuable_branch(selection):
    cfg = dataclasses.replace(CFG, num_simulations=8, selection=selection, exploration=0.5, max_depth=30)
    tree = drive(SearchTree("p", cfg, judge), good_and_bad)
    good, bad = tree.nodes[1], tree.nodes[2]
    assert good.visits > bad.visits
    assert len(good.children) > len(bad.children)
    assert tree.stats()["terminal_correct"] > 0


def test_terminal_answers_and_max_depth():
    cfg = dataclasses.replace(CFG, max_depth=2, expansion_width=1, num_simulations=20)
    tree = drive(SearchTree("p", cfg, judge),
               lambda r: ["Step: x"] * r.n if r.kind == "expand" else [" Answer: 5"] * r.n)
    assert max(n.depth for n in tree.nodes) == 2
    deepest = [n for n in tree.nodes if n.depth == 2]
    assert all(n.terminal and n.correct is False and n.answer is None for n in deepest)
    assert tree.nodes[0].exhausted and tree.done and tree.simulations < 20  # exhausted early


def test_garbage_and_failed_generations_become_invalid_nodes_not_crashes():
    def garbage(request):
        return ["", "   \n  "] if request.kind == "expand" else ["\x00\xff"] * request.n

    tree = drive(SearchTree("p", CFG, judge), garbage)
    assert tree.done and tree.counts["invalid_nodes"] == 1  # the two empty samples merge
    assert tree.nodes[1].invalid and tree.nodes[1].correct is False

    tree = SearchTree("q", CFG, judge)
    [req] = tree.next_requests()
    tree.apply([SearchResult(req.request_id, (Generation("", 0, failed=True),) * req.n)])
    assert tree.counts["failed_generations"] == 2 and tree.done


def test_endless_rollouts_without_answers_score_zero():
    tree = drive(SearchTree("p", dataclasses.replace(CFG, num_simulations=3), judge),
               lambda r: ["Step: go on"] * r.n if r.kind == "expand" else ["words " * 200] * r.n)
    assert tree.nodes[0].value == 0.0 and tree.nodes[0].visits > 0


@pytest.mark.parametrize(("budget", "check"), [
    ({"num_simulations": 3}, lambda t: t.simulations == 3),
    ({"max_nodes": 5}, lambda t: 5 <= len(t.nodes) <= 5 + CFG.expansion_width),
    ({"max_tokens": 30}, lambda t: 30 <= t.tokens < 30 + 40),
])
def test_budgets_stop_the_search(budget, check):
    cfg = dataclasses.replace(CFG, **budget)
    tree = drive(SearchTree("p", cfg, judge),
               lambda r: [f"Step {r.seed % 97}: x", "Step: y"][: r.n] if r.kind == "expand"
               else [" Answer: 5"] * r.n)
    assert check(tree), tree.stats()


def test_identical_siblings_merge_with_frequency_priors():
    cfg = dataclasses.replace(CFG, expansion_width=4, num_simulations=1)
    tree = drive(SearchTree("p", cfg, judge),
               lambda r: ["Step 1: a", "Step 1: a\nStep 2: b", "Step 1: b", "Step 1: a"]
               if r.kind == "expand" else [" Answer: 5"] * r.n)
    children = [tree.nodes[i] for i in tree.nodes[0].children]
    assert [(c.step, c.prior) for c in children] == [("Step 1: a", 0.75), ("Step 1: b", 0.25)]


def test_deterministic_for_a_seed_and_round_trips_through_rows():
    def respond(r):  # depends on the request seed, so tree randomness shows up in the output
        if r.kind == "expand":
            return [f"Step: s{r.seed % 3}", f"Step: t{r.seed % 5}", "Answer: 5"][: r.n]
        return [" Answer: 5" if r.seed % 2 else " Answer: 4"] * r.n

    cfg = dataclasses.replace(CFG, expansion_width=3, num_simulations=10)
    a = drive(SearchTree("p", cfg, judge, seed=1), respond).to_rows()
    b = drive(SearchTree("p", cfg, judge, seed=1), respond).to_rows()
    c = drive(SearchTree("p", cfg, judge, seed=2), respond).to_rows()
    assert a == b and a != c
    nodes = nodes_from_rows(a)
    tree = drive(SearchTree("p", cfg, judge, seed=1), respond)
    assert [(n.node_id, n.parent_id, n.children, n.visits, n.value, n.exhausted) for n in nodes] == [
        (n.node_id, n.parent_id, n.children, n.visits, n.value, n.exhausted) for n in tree.nodes]
    with pytest.raises(ValueError, match="no gaps"):
        nodes_from_rows(a[1:])


def test_unknown_result_ids_are_rejected():
    tree = SearchTree("p", CFG, judge)
    with pytest.raises(KeyError, match="no outstanding request 99"):
        tree.apply([SearchResult(99, ())])


def test_waits_for_outstanding_requests():
    tree = SearchTree("p", CFG, judge)
    first = tree.next_requests()
    assert len(first) == 1 and first[0].kind == "expand" and first[0].prefix == ""
    assert tree.next_requests() == [] and not tree.done
    tree.apply([SearchResult(first[0].request_id, (Generation("Step 1: a", 3), Generation("Step 1: b", 3)))])
    rollouts = tree.next_requests()
    assert [r.kind for r in rollouts] == ["rollout", "rollout"]
    assert {r.prefix for r in rollouts} == {"Step 1: a\n", "Step 1: b\n"}


def test_parallel_simulations_keep_several_expansions_in_flight_on_distinct_leaves():
    cfg = dataclasses.replace(CFG, parallel_simulations=3, num_simulations=12, max_depth=30)
    tree = SearchTree("p", cfg, judge)
    pending = tree.next_requests()
    assert [r.kind for r in pending] == ["expand"]  # the root is the only leaf
    rnd = random.Random(0)
    most_expanding = 1
    while not tree.done:
        pending += tree.next_requests()
        expanding = [r.node_id for r in pending if r.kind == "expand"]
        assert len(expanding) == len(set(expanding)) <= 3
        most_expanding = max(most_expanding, len(expanding))
        # Results come back one at a time, in any order, as they do from concurrent engine calls.
        request = pending.pop(rnd.randrange(len(pending)))
        texts = good_and_bad(request)
        tree.apply([SearchResult(request.request_id, tuple(Generation(t, 1) for t in texts))])
    assert most_expanding >= 2 and tree.simulations == 12  # sequential search: never more than 1
    assert all(n.virtual_visits == 0 and not n.expanding for n in tree.nodes)
    root = tree.nodes[0]
    terminals = sum(n.terminal for n in tree.nodes)
    assert root.visits == tree.counts["rollouts"] + terminals
    # Values stay exact fractions of correct rollouts (a virtual loss never reaches `value_sum`).
    assert (tree.nodes[1].value, tree.nodes[2].value) == (1.0, 0.0)


def test_virtual_loss_sends_the_second_simulation_down_another_branch():
    cfg = dataclasses.replace(CFG, parallel_simulations=2, rollouts_per_node=1, num_simulations=3)
    tree = SearchTree("p", cfg, judge)
    (root_expansion,) = tree.next_requests()
    tree.apply([SearchResult(root_expansion.request_id, (Generation("Step 1: a", 1), Generation("Step 1: b", 1)))])
    *rollouts, second = tree.next_requests()  # the first simulation's rollouts, the second's expansion
    assert [r.kind for r in rollouts] == ["rollout", "rollout"] and second.kind == "expand"
    assert second.node_id in (1, 2) and tree.nodes[second.node_id].virtual_visits == 1
    assert tree.nodes[0].virtual_visits == 2  # one visit in flight per open simulation
    tree.apply([SearchResult(r.request_id, (Generation(" Answer: 5", 1),)) for r in rollouts])
    assert tree.simulations == 1 and tree.nodes[0].virtual_visits == 1
    (third,) = tree.next_requests()
    assert third.kind == "expand" and third.node_id == 3 - second.node_id  # not the leaf in flight


def test_parallel_simulations_stop_at_the_simulation_budget():
    cfg = dataclasses.replace(CFG, parallel_simulations=8, num_simulations=5, max_depth=30)
    tree = drive(SearchTree("p", cfg, judge), good_and_bad)
    assert tree.simulations == 5 and tree.counts["expansions"] == 5


@pytest.mark.parametrize(("text", "step"), [("Step 2: x\nStep 3: y", "Step 2: x"), ("  a  ", "a"),
                                            ("\n\nb", "b"), ("", "")])
def test_segment_step(text, step):
    assert segment_step(text) == step
