"""`AnnotatorWorker`: turns mined pairs into critiques, as a Ray Data actor-pool stage.

Three strategies behind one worker: the rule annotator (synthetic tasks: ground-truth step values),
the model-free `mc` annotator (the search's node values, critique/mc_annotator.py) and the LLM
annotator (any engine, with the annotator prompt). An LLM critique that does not parse
is asked for again with the parser's reason, up to `max_repair_attempts` times; then the pair is a
counted drop with that reason and the raw output. Every pair in gives exactly one row out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mmc_ray.config import AnnotateConfig, Config
from mmc_ray.critique.mc_annotator import mc_critique
from mmc_ray.critique.prompts import FORMAT_SPEC, annotation_messages
from mmc_ray.critique.records import PathToCritique
from mmc_ray.critique.rule_annotator import reference_first_wrong_step, rule_critique
from mmc_ray.critique.schema import Critique, parse_critique
from mmc_ray.engine_protocol import GenerationEngine, GenerationRequest
from mmc_ray.schemas import CRITIQUE_SCHEMA, DROP_SCHEMA

OUTCOME_SCHEMA = pa.schema([*CRITIQUE_SCHEMA, pa.field("status", pa.string()),
                            pa.field("reason", pa.string()), pa.field("raw_output", pa.string())])
RAW_OUTPUT_CHARS = 2000


@dataclass(frozen=True)
class Dropped:
    reason: str
    raw_output: str = ""


Outcome = Critique | Dropped


class LLMAnnotator:
    """Critiques by a model, with repair retries. Batched: one engine call per attempt round."""

    def __init__(self, engine: GenerationEngine, cfg: AnnotateConfig) -> None:
        self.engine = engine
        self.cfg = cfg

    def annotate(self, items: Sequence[PathToCritique]) -> list[Outcome]:
        conversations = [list(annotation_messages(item)) for item in items]
        outcomes: list[Outcome | None] = [None] * len(items)
        last = [Dropped("not attempted")] * len(items)
        pending = list(range(len(items)))
        for attempt in range(1 + self.cfg.max_repair_attempts):
            if not pending:
                break
            requests = [GenerationRequest(messages=tuple(conversations[i]),
                                          images=items[i].problem.images,
                                          temperature=self.cfg.temperature,
                                          max_new_tokens=self.cfg.max_new_tokens,
                                          seed=self.cfg.seed + attempt,
                                          metadata={"problem_id": items[i].problem.problem_id})
                        for i in pending]
            still = []
            for i, result in zip(pending, self.engine.generate(requests), strict=True):
                completion = result.completions[0]
                if completion.finish_reason == "error":
                    last[i] = Dropped(f"engine error: {completion.error}")
                    continue  # retrying the same input would fail the same way
                parsed = parse_critique(completion.text, num_steps=len(items[i].path_steps))
                if parsed.ok:
                    outcomes[i] = parsed.critique
                    continue
                last[i] = Dropped(f"unparseable after {attempt + 1} attempt(s): {parsed.error}",
                                  completion.text[:RAW_OUTPUT_CHARS])
                conversations[i] += [
                    {"role": "assistant", "content": completion.text},
                    {"role": "user", "content": f"That reply is not a critique in the required format "
                                                f"({parsed.error}). {FORMAT_SPEC}"},
                ]
                still.append(i)
            pending = still
        return [o if o is not None else last[i] for i, o in enumerate(outcomes)]


def _rule_outcome(item: PathToCritique) -> Outcome:
    result = rule_critique(item.problem, item.path_steps, item.path_answer, key=item.pair_id)
    return Dropped(result) if isinstance(result, str) else result


def _mc_outcome(item: PathToCritique, low_value: float) -> Outcome:
    result = mc_critique(item.path_steps, item.path_step_values, item.path_correct, low_value,
                         key=item.pair_id, sibling_steps=item.reference_steps)
    return Dropped(result) if isinstance(result, str) else result


def outcome_row(item: PathToCritique, outcome: Outcome, annotator: str, split: str) -> dict[str, Any]:
    """One row of OUTCOME_SCHEMA: a critique row (status ok) or a drop (status dropped)."""
    problem = item.problem
    row = {name: value for name, value in item.to_row().items() if name in CRITIQUE_SCHEMA.names}
    row.update(split=split, annotator=annotator)
    if isinstance(outcome, Dropped):
        return {**row, "status": "dropped", "reason": outcome.reason, "raw_output": outcome.raw_output}
    reference = reference_first_wrong_step(problem, item.path_steps) if problem.steps else None
    return {
        **row,
        "verdict": outcome.verdict,
        "first_wrong_step": outcome.first_wrong_step,
        "error_type": outcome.error_type,
        "explanation": outcome.explanation,
        "correction": outcome.correction,
        "critique_text": outcome.to_text(),
        "reference_first_wrong_step": reference,
        "agrees_with_reference": outcome.first_wrong_step == reference if problem.steps else None,
        "status": "ok",
        "reason": "",
        "raw_output": "",
    }


def split_outcomes(table: pa.Table) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(critique rows, drop rows) of an outcome table, each in its own schema's columns."""
    critiques, drops = [], []
    for row in table.to_pylist():
        if row["status"] == "ok":
            critiques.append({k: row[k] for k in CRITIQUE_SCHEMA.names})
        else:
            drops.append({k: row[k] for k in DROP_SCHEMA.names})
    return critiques, drops


class AnnotatorWorker:
    """Ray Data actor-pool stage: pair rows (PAIR_SCHEMA) in, outcome rows (OUTCOME_SCHEMA) out."""

    def __init__(self, cfg: Config, split_of: Any) -> None:
        self.method = cfg.annotate.method
        self.low_value = cfg.annotate.mining.low_value
        self.split_of = split_of
        self.llm = None
        if self.method == "llm":
            from mmc_ray.engines.factory import build_engine

            self.llm = LLMAnnotator(build_engine(cfg.annotator), cfg.annotate)

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = [PathToCritique.from_row(row) for row in batch.to_pylist()]
        if self.llm is not None:
            outcomes = self.llm.annotate(items)
        elif self.method == "mc":
            outcomes = [_mc_outcome(i, self.low_value) for i in items]
        else:
            outcomes = [_rule_outcome(i) for i in items]
        rows = [outcome_row(item, outcome, self.method, self.split_of(item.problem.problem_id))
                for item, outcome in zip(items, outcomes, strict=True)]
        return pa.Table.from_pylist(rows, schema=OUTCOME_SCHEMA)
