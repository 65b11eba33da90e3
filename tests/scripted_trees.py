"""Scripted responders that drive the pure MCTS core without a model (tests/unit/test_mcts_tree.py,
tests/unit/test_pairs.py): 'good' first steps always end correct (answer 5), 'bad' ones wrong."""

import re

from mmc_ray.mcts.tree import Generation, SearchResult, SearchTree, Verdict


def judge(text: str) -> Verdict:
    m = re.search(r"Answer: (\S+)", text)
    return Verdict(m.group(1), m.group(1) == "5") if m else Verdict(None, False)


def drive(tree: SearchTree, respond, max_rounds: int = 1000) -> SearchTree:
    """Run a tree to completion: `respond(request) -> list[str]` of `request.n` texts."""
    for _ in range(max_rounds):
        if tree.done:
            return tree
        requests = tree.next_requests()
        assert requests, "a tree that is not done must ask for something"
        tree.apply([SearchResult(r.request_id, tuple(Generation(t, len(t.split())) for t in respond(r)))
                    for r in requests])
    raise AssertionError("tree did not finish")


def good_and_bad(request, finish_with_a_step: bool = False) -> list[str]:
    """Two first steps, 'good' and 'bad'; rollouts answer at once, or (`finish_with_a_step`) after one
    more step, as a model's completion would."""
    answer = "5" if "good" in request.prefix else "4"
    depth = request.prefix.count("\n")
    if request.kind == "expand":
        if not request.prefix:
            return ["Step 1: good", "Step 1: bad"][: request.n]
        return [f"Step {depth + 1}: more", f"Answer: {answer}"][: request.n]
    if finish_with_a_step:
        return [f" \nStep {depth + 1}: finish\nAnswer: {answer}"] * request.n
    return [f" Answer: {answer}"] * request.n
