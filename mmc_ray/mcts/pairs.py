"""Divergent-pair mining: where a search tree's sibling branches split into a right and a wrong path.

A pair is a node whose children include a good branch (value >= high_value) and a bad branch
(value <= low_value), both visited enough to trust their values, with one representative full path on
each side: the shared prefix (the steps down to the divergence node), then each side's own steps to
an answer. Fully correct paths are also sampled as "no error" examples. Pure: stdlib only.

Mined paths carry no "Step k:" numbering (downstream renders its own), and never the answer line:
`MinedPath.steps` is the reasoning, `MinedPath.answer` the final answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from mmc_ray.mcts.tree import Node, nodes_from_rows
from mmc_ray.tasks.solution import parse_reasoning, strip_step_prefix

if TYPE_CHECKING:
    from mmc_ray.config import PairMiningConfig

T = TypeVar("T")


@dataclass(frozen=True)
class MinedPath:
    steps: tuple[str, ...]  # root to end without "Step k:" numbering; the answer line excluded
    answer: str | None
    correct: bool
    # Each step's node value in the tree (the share of correct rollouts below it); None for the
    # steps of a rollout, which are no nodes. What the model-free `mc` annotator reads; not part of
    # what makes two paths the same.
    step_values: tuple[float | None, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class PathPair:
    pair_id: str
    problem_id: str
    kind: str  # "divergent" | "no_error"
    divergence_node: int  # -1 for no_error
    divergence_depth: int  # shared steps before the paths split; -1 for no_error
    correct: MinedPath
    wrong: MinedPath | None  # None for no_error


@dataclass(frozen=True)
class _Candidate:
    path: MinedPath
    from_terminal: bool
    visits: int
    key: str  # what it came from ("n12" a terminal node, "n7r2" rollout 2 of node 7), for stable ids

    def rank(self) -> tuple[bool, bool, int, int, str, str]:
        # answered before unanswered, terminals before rollouts, well-visited, short, then text
        return (self.path.answer is None, not self.from_terminal, -self.visits, len(self.path.steps),
                "\n".join(self.path.steps), self.path.answer or "")


def _is_answer_line(line: str) -> bool:
    parsed = parse_reasoning(line)
    return parsed.answer is not None and not parsed.steps


def _rollout_steps(text: str) -> tuple[str, ...]:
    """The steps of a rollout continuation. `parse_reasoning` does the work; lines before the first
    "Step k:" line (a model that skips the numbering) are kept as steps of their own rather than
    dropped, so the path stays complete."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines)
                  if parse_reasoning(line).steps or _is_answer_line(line)), len(lines))
    leading = tuple(strip_step_prefix(line) for line in lines[:first] if line.strip())
    return leading + parse_reasoning("\n".join(lines[first:])).steps


class _Miner:
    """Per-tree caches: stripped root-to-node steps and the finished paths below each node."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = nodes
        self._prefix: dict[int, tuple[str, ...]] = {}
        self._below: dict[int, list[_Candidate]] = {}

    def values(self, node_id: int) -> tuple[float, ...]:
        """The node values root→node (the node's own included; the root, which has no step, not)."""
        chain = []
        node = self.nodes[node_id]
        while node.parent_id is not None:
            chain.append(node.value)
            node = self.nodes[node.parent_id]
        return tuple(reversed(chain))

    def prefix(self, node_id: int) -> tuple[str, ...]:
        """The steps root→node (the node's own step included), "Step k:" numbering stripped."""
        chain: list[int] = []
        current: int | None = node_id
        while current is not None and current not in self._prefix:
            chain.append(current)
            current = self.nodes[current].parent_id
        base = self._prefix.get(current, ()) if current is not None else ()
        for nid in reversed(chain):
            node = self.nodes[nid]
            base = (*base, strip_step_prefix(node.step)) if node.parent_id is not None else ()
            self._prefix[nid] = base
        return self._prefix[node_id]

    def subtree(self, root: int) -> Iterator[Node]:
        stack = [root]
        while stack:
            node = self.nodes[stack.pop()]
            yield node
            stack.extend(reversed(node.children))

    def candidates(self, root: int) -> list[_Candidate]:
        """Every finished path under `root` (itself included): valid terminal nodes, and the
        rollouts of the non-terminal ones."""
        if root in self._below:
            return self._below[root]
        found = []
        for node in self.subtree(root):
            if node.invalid:
                continue
            prefix = self.prefix(node.node_id)
            if node.terminal:
                # An answer line ends the path and is no step; a max-depth cut-off step is one.
                steps = prefix[:-1] if _is_answer_line(node.step) else prefix
                values = self.values(node.node_id)[:len(steps)]
                found.append(_Candidate(MinedPath(steps, node.answer, bool(node.correct), values), True,
                                        node.visits, f"n{node.node_id}"))
                continue
            values = self.values(node.node_id)
            for i, rollout in enumerate(node.rollouts):
                continued = _rollout_steps(rollout.text)
                path = MinedPath(prefix + continued, rollout.answer, rollout.correct,
                                 values + (None,) * len(continued))
                found.append(_Candidate(path, False, node.visits, f"n{node.node_id}r{i}"))
        self._below[root] = found
        return found

    def best(self, root: int, correct: bool) -> _Candidate | None:
        matching = [c for c in self.candidates(root) if c.path.correct == correct]
        return min(matching, key=_Candidate.rank) if matching else None


def _normalised_step(step: str) -> str:
    return " ".join(strip_step_prefix(step).lower().split())


def _normalised(path: MinedPath) -> str:
    """A path's text for near-duplicate detection: lowercased, whitespace collapsed, no numbering."""
    steps = " | ".join(_normalised_step(s) for s in path.steps)
    return f"{steps} || {' '.join((path.answer or '').lower().split())}"


def mine_pairs(problem_id: str, nodes: Sequence[Node], cfg: PairMiningConfig,
               seed: int = 0) -> list[PathPair]:
    """Divergent pairs (deduplicated, capped per depth and per problem, spread across depths, in
    that spread order) followed by up to `no_error_per_problem` fully correct paths. Deterministic
    for (inputs, seed); `nodes` must carry their `children` (as `SearchTree.nodes` and
    `nodes_from_rows` do)."""
    if not nodes:
        return []
    miner = _Miner(nodes)

    def trusted(n: Node) -> bool:
        return not n.invalid and n.visits >= cfg.min_visits

    found: list[PathPair] = []
    seen: set[str] = set()
    for parent in sorted(nodes, key=lambda n: (n.depth, n.node_id)):
        if parent.invalid or len(parent.children) < 2:
            continue
        children = [nodes[i] for i in sorted(parent.children) if trusted(nodes[i])]
        goods = [c for c in children if c.value >= cfg.high_value]
        bads = [c for c in children if c.value <= cfg.low_value]
        for good in goods:
            for bad in bads:
                if _normalised_step(good.step) == _normalised_step(bad.step):
                    continue  # the same step written twice: the paths do not split here
                right = miner.best(good.node_id, correct=True)
                wrong = miner.best(bad.node_id, correct=False)
                if right is None or wrong is None or _normalised(wrong.path) in seen:
                    continue
                seen.add(_normalised(wrong.path))
                found.append(PathPair(f"{problem_id}:{parent.node_id}:{good.node_id}:{bad.node_id}",
                                      problem_id, "divergent", parent.node_id, parent.depth,
                                      right.path, wrong.path))
    pairs = _cap_spread(found, cfg)

    chosen = _distinct_correct(miner)
    random.Random(f"{seed}:{problem_id}").shuffle(chosen)
    pairs += [PathPair(f"{problem_id}:ok:{c.key}", problem_id, "no_error", -1, -1, c.path, None)
              for c in chosen[: cfg.no_error_per_problem]]
    return pairs


def _cap_spread(pairs: Sequence[PathPair], cfg: PairMiningConfig) -> list[PathPair]:
    """The first `max_pairs_per_depth` pairs of each depth, then round-robin over depths (shallow
    first) up to `max_pairs_per_problem`, so shallow and deep divergences are both kept."""
    kept: list[PathPair] = []
    per_depth: dict[int, int] = {}
    for pair in pairs:
        if per_depth.get(pair.divergence_depth, 0) < cfg.max_pairs_per_depth:
            per_depth[pair.divergence_depth] = per_depth.get(pair.divergence_depth, 0) + 1
            kept.append(pair)
    return balanced_sample(kept, key=lambda p: p.divergence_depth, limit=cfg.max_pairs_per_problem)


def mine_pairs_from_row(row: Mapping[str, Any], cfg: PairMiningConfig, seed: int = 0) -> list[PathPair]:
    """Pairs of one stored tree row (`TREE_SCHEMA`: `problem_id` and the `nodes` table)."""
    return mine_pairs(row["problem_id"], nodes_from_rows(row["nodes"]), cfg, seed)


def _distinct_correct(miner: _Miner) -> list[_Candidate]:
    """The tree's correct finished paths, one per normalised text, best ranked first."""
    distinct: dict[str, _Candidate] = {}
    for c in sorted((c for c in miner.candidates(0) if c.path.correct), key=_Candidate.rank):
        distinct.setdefault(_normalised(c.path), c)
    return list(distinct.values())


def correct_paths(nodes: Sequence[Node], limit: int) -> list[MinedPath]:
    """Up to `limit` distinct correct, answered paths of a tree (terminals before rollouts, well
    visited, short first): the actor's own reasoning that ended right, for it to imitate."""
    answered = [c.path for c in _distinct_correct(_Miner(nodes)) if c.path.answer is not None]
    return answered[:limit]


def balanced_sample(items: Sequence[T], key: Callable[[T], Hashable], limit: int | None) -> list[T]:
    """Round-robin over the groups of `key` (groups in sorted key order, by `str(key)` when keys do
    not compare; items in input order within a group), so any prefix of the result is spread evenly
    across groups; the first `limit` items (all of them if None). Deterministic: the order follows
    from the keys and the input order alone."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    try:
        order = sorted(groups)
    except TypeError:
        order = sorted(groups, key=str)
    want = len(items) if limit is None else max(0, min(limit, len(items)))
    out: list[T] = []
    queues = [iter(groups[k]) for k in order]
    while len(out) < want and queues:
        alive = []
        for queue in queues:
            item = next(queue, _DONE)
            if item is _DONE:
                continue
            out.append(item)
            alive.append(queue)
            if len(out) == want:
                break
        queues = alive
    return out


_DONE: Any = object()
