"""The model-free `mc` annotator on hand-built trees whose node values are known: the first step of
a wrong path whose value falls to low_value or below is the first wrong step."""

from mmc_ray.config import PairMiningConfig
from mmc_ray.critique.mc_annotator import first_low_step, mc_critique
from mmc_ray.critique.schema import parse_critique
from mmc_ray.mcts.pairs import mine_pairs
from mmc_ray.mcts.tree import Node, Rollout

CFG = PairMiningConfig(high_value=0.7, low_value=0.3, min_visits=2)


def tree(*specs):
    """Nodes from (parent, step, visits, value, terminal, answer, correct, rollouts); node 0 is the root."""
    nodes = [Node(0, None, "", 0, visits=sum(s[2] for s in specs if s[0] == 0))]
    for parent, step, visits, value, terminal, answer, correct, rollouts in specs:
        node = Node(len(nodes), parent, step, nodes[parent].depth + 1, visits=visits, value_sum=value * visits,
                    terminal=terminal, answer=answer, correct=correct, exhausted=terminal,
                    rollouts=[Rollout(t, a, c, 3) for t, a, c in rollouts])
        nodes.append(node)
        nodes[parent].children.append(node.node_id)
    return nodes


# Root → "count the circles: 3" (value 0.5) splits at step 2 into a good branch (0.9) and a bad one
# (0.6, still recoverable), whose child at step 3 falls to 0.25 and ends wrong.
NODES = tree(
    (0, "Step 1: count the circles: 3", 8, 0.5, False, None, None, []),
    (1, "Step 2: add the squares: 3 + 2 = 5", 4, 0.9, False, None, None,
     [(" Step 3: so 5\nAnswer: 5", "5", True)]),
    (1, "Step 2: add the squares: 3 + 1 = 4", 4, 0.25, False, None, None, []),
    (3, "Step 3: double it: 8", 2, 0.0, True, "8", False, []),
)


def test_step_values_follow_the_mined_path_through_the_tree():
    [pair] = [p for p in mine_pairs("p1", NODES, CFG) if p.kind == "divergent"]
    assert pair.wrong.steps == ("count the circles: 3", "add the squares: 3 + 1 = 4", "double it: 8")
    assert pair.wrong.step_values == (0.5, 0.25, 0.0)
    assert pair.correct.step_values == (0.5, 0.9, None)  # its last step is a rollout's, no node


def test_the_first_step_at_or_below_low_value_is_flagged_and_the_correction_quotes_the_sibling():
    [pair] = [p for p in mine_pairs("p1", NODES, CFG) if p.kind == "divergent"]
    critique = mc_critique(pair.wrong.steps, pair.wrong.step_values, False, CFG.low_value, pair.pair_id,
                           sibling_steps=pair.correct.steps)
    assert (critique.verdict, critique.first_wrong_step, critique.error_type) == ("incorrect", 2, "other")
    assert "25%" in critique.explanation and "50%" in critique.explanation  # the values it rests on
    assert "add the squares: 3 + 2 = 5" in critique.correction
    assert parse_critique(critique.to_text(), num_steps=3).critique == critique  # trainable text
    again = mc_critique(pair.wrong.steps, pair.wrong.step_values, False, CFG.low_value, pair.pair_id,
                        sibling_steps=pair.correct.steps)
    assert again == critique  # deterministic


def test_low_value_is_inclusive_and_a_first_step_has_no_before():
    assert first_low_step([0.3, 0.1], 0.3) == 1
    assert first_low_step([None, 0.31, 0.2], 0.3) == 3
    assert first_low_step([0.9, None], 0.3) is None
    critique = mc_critique(["a", "b"], [0.2, 0.0], False, 0.3, "k")
    assert critique.first_wrong_step == 1 and "after step 0" not in critique.explanation


def test_a_correct_path_is_judged_sound_citing_its_lowest_value():
    critique = mc_critique(["a", "b", "c"], [0.5, 0.9, None], True, 0.3, "k")
    assert critique.verdict == "correct" and "50%" in critique.explanation


def test_paths_the_values_cannot_judge_are_counted_drops_with_a_reason():
    assert "falls to low_value" in mc_critique(["a", "b"], [0.8, None], False, 0.3, "k")
    assert "no step of the path is a tree node" in mc_critique(["a"], [None], True, 0.3, "k")
    assert "2 steps but 1 step values" in mc_critique(["a", "b"], [0.1], False, 0.3, "k")
