"""The Grafana dashboard charts exactly the metrics the code exports (no panel on a name that does
not exist, no exported metric without a panel)."""

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def exported_metrics() -> set[str]:
    """Every `StageMetrics("stage", counters=(...), gauges=(...))` in the package, as mmc_<stage>_<name>."""
    names = set()
    for path in (ROOT / "mmc_ray").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "StageMetrics":
                stage = node.args[0].value
                for kw in node.keywords:
                    names.update(f"mmc_{stage}_{elt.value}" for elt in kw.value.elts)
    return names


def test_every_exported_metric_has_a_panel_and_every_panel_metric_exists():
    dashboard = json.loads((ROOT / "cluster" / "grafana-mmc-ray.json").read_text())
    charted = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"ray_(mmc_[a-z_]+?)\(_total\)", target["expr"])}
    exported = exported_metrics()
    assert {"mmc_search_expansions", "mmc_train_loss", "mmc_annotate_critiques", "mmc_serve_critiques",
            "mmc_refine_problems"} <= exported
    assert charted == exported
