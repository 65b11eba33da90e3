"""The dataset card (README.md) of an MMC dataset folder: what is in it, how it was made, what was
dropped and why, and how often the annotator agrees with ground truth. Hugging Face's
`load_dataset("parquet", data_files=...)` and the Hub read the YAML header's splits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from mmc_ray import __version__
from mmc_ray.config import Config, config_to_dict
from mmc_ray.store.layout import DROPS, SPLITS, data_dir, drops_dir
from mmc_ray.store.shards import shard_paths, verified_shards

CARD_COLUMNS = ["split", "family", "kind", "divergence_depth", "verdict", "error_type", "annotator",
                "agrees_with_reference", "problem_id"]


def _rows(folder: Path, prefix: str, columns: list[str]) -> list[dict[str, Any]]:
    shards = verified_shards(shard_paths(folder, prefix))
    return [r for p in shards for r in pq.read_table(p, columns=columns).to_pylist()]


def _table(title: str, counts: Iterable[tuple[Any, int]], total: int) -> str:
    lines = [f"| {title} | rows | share |", "|---|---:|---:|"]
    lines += [f"| {key} | {n} | {n / total:.1%} |" for key, n in counts]
    return "\n".join(lines)


def card_stats(out_dir: Path) -> dict[str, Any]:
    rows = [r for s in SPLITS for r in _rows(data_dir(out_dir), s, CARD_COLUMNS)]
    drops = _rows(drops_dir(out_dir), DROPS, ["reason", "family"])
    checked = [r["agrees_with_reference"] for r in rows if r["agrees_with_reference"] is not None]
    return {
        "rows": len(rows),
        "drops": len(drops),
        "problems": {s: len({r["problem_id"] for r in rows if r["split"] == s}) for s in SPLITS},
        "split": Counter(r["split"] for r in rows),
        "family": Counter(r["family"] for r in rows),
        "kind": Counter(r["kind"] for r in rows),
        "depth": Counter(r["divergence_depth"] for r in rows if r["kind"] == "divergent"),
        "verdict": Counter(r["verdict"] for r in rows),
        "error_type": Counter(r["error_type"] for r in rows if r["verdict"] == "incorrect"),
        "annotator": Counter(r["annotator"] for r in rows),
        "drop_reason": Counter(d["reason"] for d in drops),
        "agreement_checked": len(checked),
        "agreement": sum(checked) / len(checked) if checked else None,
    }


def write_card(out_dir: str | Path, cfg: Config) -> Path:
    out_dir = Path(out_dir)
    stats = card_stats(out_dir)
    total = max(1, stats["rows"])
    present = [s for s in SPLITS if shard_paths(data_dir(out_dir), s)]
    header = {"configs": [{"config_name": "default", "data_files": [
        {"split": s, "path": f"data/{s}-*.parquet"} for s in present]}],
        "tags": ["mmc", "critique", "process-supervision", "multimodal"]}
    agreement = (f"{stats['agreement']:.2%} of {stats['agreement_checked']} rows"
                 if stats["agreement"] is not None else "not measured (no ground-truth steps)")
    sections = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        "# MMC critique dataset", "",
        "Critiques of reasoning paths found by MCTS: where sibling paths diverge and one ends right, "
        "the other wrong, the wrong path is critiqued (first wrong step, error type, explanation, "
        "correction); fully correct paths are included as \"no error\" examples. Each row carries the "
        "image (PNG bytes), the question, the critiqued path (`path_steps`, `path_answer`), the correct "
        "sibling path for divergent pairs (`reference_steps`), and `critique_text`, the exact text a "
        "critic is trained to emit.", "",
        f"Made by mmc-ray {__version__} with the `{cfg.annotate.method}` annotator. "
        f"{stats['rows']} critiques, {stats['drops']} drops.", "",
        "## Splits (by problem: no problem appears in two splits)", "",
        "| split | rows | problems |", "|---|---:|---:|",
        *[f"| {s} | {stats['split'].get(s, 0)} | {stats['problems'][s]} |" for s in SPLITS], "",
        "## Annotator agreement with ground truth", "",
        f"First wrong step equal to the strict reference (first step whose text differs from the "
        f"ground-truth solution): {agreement}.", "",
        "## Composition", "",
        _table("task family", sorted(stats["family"].items()), total), "",
        _table("kind", sorted(stats["kind"].items()), total), "",
        _table("verdict", sorted(stats["verdict"].items()), total), "",
        _table("error type (incorrect verdicts)", stats["error_type"].most_common(), total), "",
        _table("divergence depth (shared steps)", sorted(stats["depth"].items()), total), "",
        "## Dropped pairs", "",
        (_table("reason", stats["drop_reason"].most_common(20), max(1, stats["drops"]))
         if stats["drops"] else "None."), "",
        "## Loading", "", "```python",
        "from datasets import load_dataset",
        f"ds = load_dataset(\"parquet\", data_files={{s: f\"{out_dir}/data/{{s}}-*.parquet\" for s in "
        f"{present!r}}})", "```", "",
        "## Annotation settings", "", "```yaml",
        yaml.safe_dump({"annotate": config_to_dict(cfg.annotate)}, sort_keys=False).strip(), "```", "",
    ]
    path = out_dir / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sections))
    return path
