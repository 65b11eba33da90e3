"""Monte Carlo Tree Search over reasoning steps, as a pure state machine.

The tree never calls a model. `next_requests()` hands out what it needs generated (an expansion:
`expansion_width` samples of the next step after a node's path; a rollout: completions from a new
node to a final answer) and `apply(results)` takes the generations back. A driver can therefore
batch the requests of hundreds of trees into one engine call, and the search is testable with
scripted results.

One simulation = select a leaf by UCT/PUCT among children that are not exhausted, expand it, roll
out every new non-terminal child `rollouts_per_node` times, and back the rewards up to the root.
A node's value is the fraction of the rollouts (and terminal answers) below it that ended correct.
Priors are sampling frequencies: identical sibling samples merge into one child whose prior is its
share of the expansion's samples.

With `parallel_simulations` > 1 a tree runs that many simulations at once, so it keeps more
sequences on the engine (one tree's expansion and rollouts are otherwise strictly sequential). As
in parallel MCTS, each simulation in flight puts a virtual loss on its path (one visit, no reward,
until its rollouts are backed up) so the next selection spreads to other branches, and a leaf being
expanded is never selected twice. With 1 the search is exactly the sequential one.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mmc_ray.config import SearchConfig

RequestKind = Literal["expand", "rollout"]
ANSWER_MARKER = "answer:"


@dataclass(frozen=True)
class Verdict:
    """What the judge says of a finished reasoning text."""

    answer: str | None
    correct: bool


Judge = Callable[[str], Verdict]


@dataclass(frozen=True)
class SearchRequest:
    """Continue `prefix` (the assistant's reasoning so far) `n` times: one step (expand) or to the
    end (rollout)."""

    request_id: int
    kind: RequestKind
    node_id: int
    prefix: str
    n: int
    max_new_tokens: int
    seed: int


@dataclass(frozen=True)
class Generation:
    """One completion as the tree needs it. `failed` marks an engine error for this sample."""

    text: str
    tokens: int
    failed: bool = False


@dataclass(frozen=True)
class SearchResult:
    request_id: int
    generations: tuple[Generation, ...]


@dataclass(frozen=True)
class Rollout:
    text: str
    answer: str | None
    correct: bool
    tokens: int


@dataclass
class _OpenSimulation:
    leaf_id: int
    requests_left: int = 0  # its expansion, then its rollouts, not yet applied


@dataclass
class Node:
    node_id: int
    parent_id: int | None
    step: str
    depth: int
    prior: float = 1.0
    visits: int = 0
    value_sum: float = 0.0
    terminal: bool = False
    invalid: bool = False
    answer: str | None = None
    correct: bool | None = None
    tokens: int = 0
    exhausted: bool = False
    children: list[int] = field(default_factory=list)
    rollouts: list[Rollout] = field(default_factory=list)
    virtual_visits: int = 0  # simulations in flight through this node (their virtual loss)
    expanding: bool = False  # an expansion of this leaf is in flight

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0


def segment_step(text: str) -> str:
    """The first step of a generated continuation: up to the first newline, trimmed. (Engines are
    asked to stop at a newline; this also covers engines that ignore stop strings.)"""
    return text.strip().split("\n", 1)[0].strip()


def is_answer_step(step: str) -> bool:
    return ANSWER_MARKER in step.lower()


class SearchTree:
    """MCTS for one problem. Deterministic for a seed given the same results."""

    def __init__(self, problem_id: str, cfg: SearchConfig, judge: Judge, seed: int = 0) -> None:
        self.problem_id = problem_id
        self.cfg = cfg
        self.judge = judge
        self.rng = random.Random(f"{seed}:{problem_id}")
        self.nodes: list[Node] = [Node(node_id=0, parent_id=None, step="", depth=0)]
        self.simulations = 0
        self.tokens = 0
        self.counts = {"expansions": 0, "rollouts": 0, "invalid_nodes": 0, "failed_generations": 0}
        self._ids = itertools.count()
        self._sim_ids = itertools.count()
        self._outstanding: dict[int, SearchRequest] = {}
        self._queued: list[SearchRequest] = []
        self._sim_of_request: dict[int, int] = {}
        self._open_sims: dict[int, _OpenSimulation] = {}

    # -- the driver's interface --------------------------------------------------------------

    @property
    def done(self) -> bool:
        """No more requests will come: a budget is spent or every path is terminal."""
        if self._outstanding or self._queued:
            return False
        return self._budget_spent() or self.nodes[0].exhausted

    def next_requests(self) -> list[SearchRequest]:
        """Requests to generate now: queued rollouts, then one expansion per simulation that can
        start (up to `parallel_simulations` in flight), else nothing (waiting, or done)."""
        out, self._queued = self._queued, []
        while len(self._open_sims) < self.cfg.parallel_simulations and not self._no_new_simulation():
            leaf = self._select()
            if leaf is None:  # every open path has a simulation in flight
                break
            out.append(self._start_simulation(leaf))
        self._outstanding.update((r.request_id, r) for r in out)
        return out

    def apply(self, results: Sequence[SearchResult]) -> None:
        for result in results:
            request = self._outstanding.pop(result.request_id, None)
            if request is None:
                raise KeyError(f"tree {self.problem_id}: no outstanding request {result.request_id}")
            self.tokens += sum(g.tokens for g in result.generations)
            self.counts["failed_generations"] += sum(g.failed for g in result.generations)
            sim_id = self._sim_of_request.pop(request.request_id)
            if request.kind == "expand":
                self._apply_expansion(request, result.generations, sim_id)
            else:
                self._apply_rollouts(request, result.generations)
            self._request_done(sim_id)

    def path_text(self, node_id: int) -> str:
        """The reasoning from the root to `node_id`, one step per line, ending with a newline."""
        steps = []
        node: Node | None = self.nodes[node_id]
        while node is not None and node.parent_id is not None:
            steps.append(node.step)
            node = self.nodes[node.parent_id]
        return "".join(f"{s}\n" for s in reversed(steps))

    # -- search --------------------------------------------------------------------------------

    def _budget_spent(self) -> bool:
        cfg = self.cfg
        return (self.simulations >= cfg.num_simulations or len(self.nodes) >= cfg.max_nodes
                or self.tokens >= cfg.max_tokens)

    def _no_new_simulation(self) -> bool:
        return (self._budget_spent() or self.nodes[0].exhausted
                or self.simulations + len(self._open_sims) >= self.cfg.num_simulations)

    def _score(self, parent: Node, child: Node) -> float:
        # Simulations in flight count as visits that found nothing (virtual loss); with none in
        # flight these are the plain UCT / PUCT scores.
        visits = child.visits + child.virtual_visits
        parent_visits = parent.visits + parent.virtual_visits
        value = child.value_sum / visits if visits else 0.0
        c = self.cfg.exploration
        if self.cfg.selection == "uct":
            if visits == 0:
                return math.inf
            return value + c * math.sqrt(math.log(max(parent_visits, 1)) / visits)
        return value + c * child.prior * math.sqrt(parent_visits) / (1 + visits)

    def _select(self) -> Node | None:
        """The leaf to expand next, or None when every open path ends in a leaf being expanded."""
        if not self._selectable(self.nodes[0]):
            return None
        node = self.nodes[0]
        while node.children:
            open_children = [self.nodes[i] for i in node.children if self._selectable(self.nodes[i])]
            scores = [self._score(node, ch) for ch in open_children]
            best = max(scores)
            node = self.rng.choice([ch for ch, s in zip(open_children, scores, strict=True) if s == best])
        return node

    def _selectable(self, node: Node) -> bool:
        if node.exhausted or node.expanding:
            return False
        if not self._open_sims or not node.children:
            return True
        return any(self._selectable(self.nodes[i]) for i in node.children)

    def _start_simulation(self, leaf: Node) -> SearchRequest:
        sim_id = next(self._sim_ids)
        self._open_sims[sim_id] = _OpenSimulation(leaf.node_id)
        leaf.expanding = True
        self._add_virtual_visits(leaf, 1)
        return self._request("expand", leaf, sim_id, n=self.cfg.expansion_width,
                             max_new_tokens=self.cfg.step_max_tokens)

    def _request_done(self, sim_id: int) -> None:
        sim = self._open_sims[sim_id]
        sim.requests_left -= 1
        if sim.requests_left == 0:
            del self._open_sims[sim_id]
            self._add_virtual_visits(self.nodes[sim.leaf_id], -1)
            self.simulations += 1

    def _add_virtual_visits(self, node: Node, delta: int) -> None:
        current: Node | None = node
        while current is not None:
            current.virtual_visits += delta
            current = self.nodes[current.parent_id] if current.parent_id is not None else None

    def _request(self, kind: RequestKind, node: Node, sim_id: int, n: int,
                 max_new_tokens: int) -> SearchRequest:
        request_id = next(self._ids)
        self._sim_of_request[request_id] = sim_id
        self._open_sims[sim_id].requests_left += 1
        return SearchRequest(request_id=request_id, kind=kind, node_id=node.node_id,
                             prefix=self.path_text(node.node_id), n=n, max_new_tokens=max_new_tokens,
                             seed=self.rng.getrandbits(31))

    def _apply_expansion(self, request: SearchRequest, generations: Sequence[Generation],
                         sim_id: int) -> None:
        parent = self.nodes[request.node_id]
        parent.expanding = False
        merged: dict[str, list[Generation]] = {}
        for g in generations:
            merged.setdefault("" if g.failed else segment_step(g.text), []).append(g)
        for step, same in merged.items():
            child = Node(node_id=len(self.nodes), parent_id=parent.node_id, step=step,
                         depth=parent.depth + 1, prior=len(same) / max(1, len(generations)),
                         tokens=sum(g.tokens for g in same))
            self.nodes.append(child)
            parent.children.append(child.node_id)
            if not step:
                # Empty, failed or whitespace-only output: a counted dead end, never a crash.
                child.invalid = child.terminal = child.exhausted = True
                child.correct = False
                self.counts["invalid_nodes"] += 1
                self._backup(child, reward=0.0, visits=1)
            elif is_answer_step(step) or child.depth >= self.cfg.max_depth:
                verdict = self.judge(self.path_text(child.node_id))
                child.terminal = child.exhausted = True
                child.answer, child.correct = verdict.answer, verdict.correct
                self._backup(child, reward=float(verdict.correct), visits=1)
            else:
                self._queued.append(self._request("rollout", child, sim_id, n=self.cfg.rollouts_per_node,
                                                  max_new_tokens=self.cfg.rollout_max_tokens))
        self.counts["expansions"] += 1
        self._mark_exhausted(parent)

    def _apply_rollouts(self, request: SearchRequest, generations: Sequence[Generation]) -> None:
        node = self.nodes[request.node_id]
        for g in generations:
            verdict = Verdict(None, False) if g.failed else self.judge(request.prefix + g.text)
            node.rollouts.append(Rollout(g.text, verdict.answer, verdict.correct, g.tokens))
        self.counts["rollouts"] += len(generations)
        self._backup(node, reward=float(sum(r.correct for r in node.rollouts[-len(generations):])),
                     visits=len(generations))

    def _backup(self, node: Node, reward: float, visits: int) -> None:
        current: Node | None = node
        while current is not None:
            current.visits += visits
            current.value_sum += reward
            current = self.nodes[current.parent_id] if current.parent_id is not None else None

    def _mark_exhausted(self, node: Node) -> None:
        """A node is exhausted when it is terminal or all its children are: selection skips it.
        Walk up while ancestors become exhausted."""
        current: Node | None = node
        while current is not None and current.children and all(
                self.nodes[i].exhausted for i in current.children):
            current.exhausted = True
            current = self.nodes[current.parent_id] if current.parent_id is not None else None

    # -- records -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        terminals = [n for n in self.nodes if n.terminal and not n.invalid]
        return {
            "simulations": self.simulations,
            "nodes": len(self.nodes),
            "tokens": self.tokens,
            "terminal_correct": sum(bool(n.correct) for n in terminals),
            "terminal_wrong": sum(not n.correct for n in terminals),
            "root_value": self.nodes[0].value,
            **self.counts,
        }

    def to_rows(self) -> list[dict[str, Any]]:
        """The tree as a flat node table (see `schemas.NODE_TYPE`)."""
        return [
            {
                "node_id": n.node_id,
                "parent_id": -1 if n.parent_id is None else n.parent_id,
                "depth": n.depth,
                "step": n.step,
                "prior": n.prior,
                "visits": n.visits,
                "value_sum": n.value_sum,
                "terminal": n.terminal,
                "invalid": n.invalid,
                "answer": n.answer,
                "correct": n.correct,
                "tokens": n.tokens,
                "rollouts": [r.__dict__ for r in n.rollouts],
            }
            for n in self.nodes
        ]


def nodes_from_rows(rows: Sequence[dict[str, Any]]) -> list[Node]:
    """Rebuild the nodes of a tree from its flat node table (children and exhaustion derived)."""
    nodes = [
        Node(node_id=r["node_id"], parent_id=None if r["parent_id"] < 0 else r["parent_id"],
             step=r["step"], depth=r["depth"], prior=r["prior"], visits=r["visits"],
             value_sum=r["value_sum"], terminal=r["terminal"], invalid=r["invalid"],
             answer=r["answer"], correct=r["correct"], tokens=r["tokens"],
             rollouts=[Rollout(**x) for x in r["rollouts"] or ()])
        for r in sorted(rows, key=lambda r: r["node_id"])
    ]
    if [n.node_id for n in nodes] != list(range(len(nodes))):
        raise ValueError("node ids must be 0..N-1 with no gaps")
    for n in nodes:
        if n.parent_id is not None:
            nodes[n.parent_id].children.append(n.node_id)
    for n in reversed(nodes):
        n.exhausted = n.terminal or (bool(n.children) and all(nodes[i].exhausted for i in n.children))
    return nodes
