"""Divergent-pair mining: where a search tree's sibling branches split into a right and a wrong path.

A pair is a node whose children include a good branch (value >= high_value) and a bad branch
(value <= low_value), both visited enough to trust their values, with one representative full path on
each side. Fully correct paths are also sampled as "no error" examples. Pure: stdlib only.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mmc_ray.mcts.tree import Node, is_answer_step, nodes_from_rows
from mmc_ray.tasks.solution import parse_reasoning, strip_step_prefix

T = TypeVar("T")


@dataclass(frozen=True)
class PairMiningConfig:
    high_value: float = 0.7
    low_value: float = 0.3
    min_visits: int = 2
    max_pairs_per_problem: int = 4
    max_pairs_per_depth: int = 2
    no_error_per_problem: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_value < self.high_value <= 1.0:
            raise ValueError("need 0 <= low_value < high_value <= 1")
        if min(self.min_visits, self.max_pairs_per_problem, self.max_pairs_per_depth) < 1:
            raise ValueError("min_visits and the pair caps must be >= 1")
        if self.no_error_per_problem < 0:
            raise ValueError("no_error_per_problem must be >= 0")


@dataclass(frozen=True)
class MinedPath:
    steps: tuple[str, ...]  # root to end without "Step k:" numbering; the answer line excluded
    answer: str | None
    correct: bool


@dataclass(frozen=True)
class PathPair:
    pair_id: str
    problem_id: str
    kind: str  # "divergent" | "no_error"
    divergence_node: int
    divergence_depth: int
    correct: MinedPath
    wrong: MinedPath | None


@dataclass(frozen=True)
class _Candidate:
    path: MinedPath
    from_terminal: bool
    visits: int
    key: str  # what it came from, for stable ids

    def rank(self) -> tuple:
        # terminals before rollouts, answered before unanswered, well-visited, short, then text
        return (not self.from_terminal, self.path.answer is None, -self.visits, len(self.path.steps),
                "\n".join(self.path.steps))


def _steps_to(nodes: Sequence[Node], node_id: int) -> list[str]:
    steps = []
    node: Node | None = nodes[node_id]
    while node is not None and node.parent_id is not None:
        steps.append(node.step)
        node = nodes[node.parent_id]
    return steps[::-1]


def _subtree(nodes: Sequence[Node], root: int) -> list[Node]:
    out, stack = [], [root]
    while stack:
        node = nodes[stack.pop()]
        out.append(node)
        stack.extend(reversed(node.children))
    return out


def _candidates(nodes: Sequence[Node], root: int) -> list[_Candidate]:
    """Every finished path under `root`: terminal nodes and the rollouts of non-terminal nodes."""
    found = []
    for node in _subtree(nodes, root):
        if node.invalid:
            continue
        prefix = [strip_step_prefix(s) for s in _steps_to(nodes, node.node_id)]
        if node.terminal:
            steps = prefix[:-1] if is_answer_step(node.step) else prefix  # the answer line is no step
            found.append(_Candidate(MinedPath(tuple(steps), node.answer, bool(node.correct)), True,
                                    node.visits, f"n{node.node_id}"))
            continue
        for i, rollout in enumerate(node.rollouts):
            parsed = parse_reasoning(rollout.text)
            found.append(_Candidate(MinedPath((*prefix, *parsed.steps), rollout.answer, rollout.correct),
                                    False, node.visits, f"n{node.node_id}r{i}"))
    return found


def _best(candidates: Sequence[_Candidate], correct: bool) -> _Candidate | None:
    matching = [c for c in candidates if c.path.correct == correct]
    return min(matching, key=_Candidate.rank) if matching else None


def _normalised(path: MinedPath) -> str:
    steps = " ".join(" ".join(s.lower().split()) for s in path.steps)
    return f"{steps} | {path.answer}"


def mine_pairs(problem_id: str, nodes: Sequence[Node], cfg: PairMiningConfig,
               seed: int = 0) -> list[PathPair]:
    """Divergent pairs (deduplicated, capped per depth and per problem, spread across depths) and
    up to `no_error_per_problem` fully correct paths."""
    def trusted(n: Node) -> bool:
        return not n.invalid and n.visits >= cfg.min_visits

    found: list[PathPair] = []
    seen: set[str] = set()
    below: dict[int, list[_Candidate]] = {}

    def candidates(node_id: int) -> list[_Candidate]:
        if node_id not in below:
            below[node_id] = _candidates(nodes, node_id)
        return below[node_id]

    for parent in sorted(nodes, key=lambda n: (n.depth, n.node_id)):
        children = [nodes[i] for i in parent.children if trusted(nodes[i])]
        goods = [c for c in children if c.value >= cfg.high_value]
        bads = [c for c in children if c.value <= cfg.low_value]
        for good in goods:
            for bad in bads:
                right = _best(candidates(good.node_id), correct=True)
                wrong = _best(candidates(bad.node_id), correct=False)
                if right is None or wrong is None or _normalised(wrong.path) in seen:
                    continue
                seen.add(_normalised(wrong.path))
                pair_id = f"{problem_id}:{parent.node_id}:{good.node_id}:{bad.node_id}"
                found.append(PathPair(pair_id, problem_id, "divergent", parent.node_id, parent.depth,
                                      right.path, wrong.path))
    pairs = _cap_spread(found, cfg)
    correct_paths = sorted((c for c in candidates(0) if c.path.correct), key=_Candidate.rank)
    distinct: dict[str, _Candidate] = {}
    for c in correct_paths:
        distinct.setdefault(_normalised(c.path), c)
    chosen = list(distinct.values())
    random.Random(f"{seed}:{problem_id}").shuffle(chosen)
    pairs += [PathPair(f"{problem_id}:ok:{c.key}", problem_id, "no_error", -1, -1, c.path, None)
              for c in chosen[: cfg.no_error_per_problem]]
    return pairs


def _cap_spread(pairs: Sequence[PathPair], cfg: PairMiningConfig) -> list[PathPair]:
    by_depth: dict[int, list[PathPair]] = defaultdict(list)
    for pair in pairs:
        if len(by_depth[pair.divergence_depth]) < cfg.max_pairs_per_depth:
            by_depth[pair.divergence_depth].append(pair)
    return balanced_sample([p for d in sorted(by_depth) for p in by_depth[d]],
                           key=lambda p: p.divergence_depth, limit=cfg.max_pairs_per_problem)


def mine_pairs_from_row(row: Mapping[str, Any], cfg: PairMiningConfig, seed: int = 0) -> list[PathPair]:
    """Pairs of one stored tree row (`TREE_SCHEMA`)."""
    return mine_pairs(row["problem_id"], nodes_from_rows(row["nodes"]), cfg, seed)


def balanced_sample(items: Sequence[T], key: Callable[[T], Hashable], limit: int | None) -> list[T]:
    """Round-robin over the groups of `key` (groups in sorted order, items in input order), so any
    prefix of the result is spread evenly across groups; the first `limit` items (all if None)."""
    groups: dict[Hashable, list[T]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    try:
        order = sorted(groups)
    except TypeError:
        order = sorted(groups, key=str)
    out: list[T] = []
    depth = 0
    while len(out) < len(items):
        for k in order:
            if depth < len(groups[k]):
                out.append(groups[k][depth])
        depth += 1
    return out if limit is None else out[:limit]
