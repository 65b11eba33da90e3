"""Evaluation report of a refinement run: `report.json` (every figure), `report.md` (for people) and
`accuracy_by_round.png`, all computed from the stored refinement records (and best-of-N samples)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mmc_ray.errors import MissingInput
from mmc_ray.eval.best_of_n import BestOfNMetrics, best_of_n_metrics, sample_counts
from mmc_ray.eval.metrics import RefinementMetrics, evaluate
from mmc_ray.eval.plot import line_chart
from mmc_ray.store.layout import REFINE, best_of_n_shards, refine_shards
from mmc_ray.store.shards import verified_shards


@dataclass(frozen=True)
class Report:
    refinement: RefinementMetrics | None  # none for a best-of-N-only run (refine.strategy=best_of_n)
    best_of_n: BestOfNMetrics | None  # none unless best-of-N ran
    markdown: Path
    json: Path
    plot: Path | None  # accuracy by round (none for a best-of-N-only run)


def _metrics_json(refinement: RefinementMetrics | None, best_of_n: BestOfNMetrics | None) -> dict[str, Any]:
    """report.json's "metrics": the refinement figures, with "best_of_n" beside them when it ran."""
    best = {"best_of_n": asdict(best_of_n)} if best_of_n else {}
    return {**(refinement.as_dict() if refinement else {}), **best}


def _shard_rows(paths: list[Path]) -> list[dict[str, Any]]:
    return [row for p in verified_shards(paths) for row in pq.read_table(p).to_pylist()]


def read_refine_rows(refine_dir: str | Path) -> list[dict[str, Any]]:
    paths = refine_shards(refine_dir)
    if not paths:
        raise MissingInput(f"no {REFINE}-*.parquet records in {refine_dir}")
    return _shard_rows(paths)


def pct(x: float | None) -> str:
    """A fraction as a percentage for people, "n/a" when not measured."""
    return "n/a" if x is None else f"{x:.1%}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _best_of_n_markdown(b: BestOfNMetrics) -> list[str]:
    return [
        "## Best-of-N (the critic as a verifier)", "",
        f"{b.problems} problems, {b.n[-1]} sampled answers each; every N is the first N of them. "
        f"Gain of best-of-{b.n[-1]} (by P(correct)) over one sample: {b.gain:+.1%}. Critic scores: "
        + ", ".join(f"{k} {v}" for k, v in sorted(b.scored_by.items())) + ".", "",
        *_table(["N", *map(str, b.n)],
                [["best-of-N, by P(correct)", *map(pct, b.best_of_n_p_correct)],
                 ["best-of-N, by min step soundness", *map(pct, b.best_of_n_min_step)],
                 ["majority vote", *map(pct, b.majority_vote)],
                 ["any sample correct (bound)", *map(pct, b.any_correct)]]),
        "",
    ]


def _markdown(m: RefinementMetrics | None, b: BestOfNMetrics | None, context: Mapping[str, Any]) -> str:
    head = [f"# Refinement report: {context.get('title', 'refinement')}", "",
            *(f"- {k}: {v}" for k, v in context.items() if k != "title"), ""]
    best = _best_of_n_markdown(b) if b else []
    if m is None:  # best-of-N only (refine.strategy=best_of_n)
        return "\n".join([*head, *best])
    c = m.critic
    lines = [
        *head,
        "## Accuracy", "",
        f"{m.problems} problems. Single pass {pct(m.single_pass_accuracy)}, after refinement "
        f"{pct(m.final_accuracy)} ({m.wrong_to_right} wrong→right, {m.right_to_wrong} "
        f"right→wrong); {m.mean_rounds:.2f} revision rounds per problem on average.", "",
        *_table(["round", *map(str, range(len(m.accuracy_by_round))), "final"],
                [["accuracy", *map(pct, m.accuracy_by_round), pct(m.final_accuracy)]]),
        "", "![accuracy by round](accuracy_by_round.png)", "",
        "## Critic", "",
        f"{c.critiques} critiques; {pct(c.parse_rate)} parsed. Verdict accuracy "
        f"{pct(c.verdict_accuracy)}. ProcessBench F1 {pct(c.processbench_f1)} (exact first wrong "
        f"step on erroneous solutions {pct(c.processbench_acc_err)}, sound ones judged correct "
        f"{pct(c.processbench_acc_cor)}). First wrong step: precision {pct(c.step_precision)}, "
        f"recall {pct(c.step_recall)}, F1 {pct(c.step_f1)} "
        f"({c.step_unknown_wrong_answers} wrong answers without a known wrong step left out).", "",
        "## By family", "",
        *_table(["family", "problems", "single pass", "final", "wrong→right", "right→wrong",
                 "verdict acc.", "ProcessBench F1", "step F1"],
                [[name, str(f.problems), pct(f.single_pass_accuracy), pct(f.final_accuracy),
                  str(f.wrong_to_right), str(f.right_to_wrong), pct(f.critic.verdict_accuracy),
                  pct(f.critic.processbench_f1), pct(f.critic.step_f1)]
                 for name, f in m.families.items()]),
        "", "## Why the loop stopped", "",
        *_table(["reason", "problems"], [[k, str(v)] for k, v in m.stop_reasons.items()]),
        "", f"Revisions that could only repeat an answer already tried: {m.repeated_answers}. "
        f"Tokens: actor {m.actor_tokens}, critic {m.critic_tokens}.", "",
        *best,
    ]
    return "\n".join(lines)


def write_report(refine_dir: str | Path, out_dir: str | Path, context: Mapping[str, Any] | None = None,
                 best_of_n_dir: str | Path | None = None, best_of_n: Sequence[int] | None = None) -> Report:
    """Evaluate the records in `refine_dir` (and the best-of-N samples in `best_of_n_dir`, when it
    holds any, at the N of `best_of_n`: by default 1, 2, 4, ... up to the samples per problem) and
    write the report files to `out_dir`. Either may be all there is."""
    context = dict(context or {})
    samples = _shard_rows(best_of_n_shards(best_of_n_dir)) if best_of_n_dir is not None else []
    refinement = evaluate(read_refine_rows(refine_dir)) if not samples or refine_shards(refine_dir) else None
    best = best_of_n_metrics(samples, best_of_n or sample_counts(samples)) if samples else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = None
    if refinement is not None:
        series = {"all": refinement.accuracy_by_round,
                  **{name: f.accuracy_by_round for name, f in refinement.families.items()}}
        plot = line_chart(series, out_dir / "accuracy_by_round.png", "Accuracy by refinement round",
                          "round (0 = single pass)", "accuracy")
    json_path = out_dir / "report.json"
    metrics = _metrics_json(refinement, best)
    json_path.write_text(json.dumps({"context": context, "metrics": metrics}, indent=2, default=str))
    md_path = out_dir / "report.md"
    md_path.write_text(_markdown(refinement, best, context))
    return Report(refinement, best, md_path, json_path, plot)
