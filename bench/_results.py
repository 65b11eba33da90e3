"""Shared by the benchmarks: where their figures go, and whether a GPU benchmark can run here."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_results(results: dict[str, Any], path: Path | None) -> None:
    """Write the figures as JSON (when a path was given) and say where."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


def missing_for_gpu_run(packages: Sequence[str], how_to_get_them: str) -> str | None:
    """Why this machine cannot run a GPU benchmark (None when it can)."""
    missing = [m for m in packages if importlib.util.find_spec(m) is None]
    if missing:
        return f"missing Python packages: {', '.join(missing)} ({how_to_get_them})"
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU and torch sees none"
    return None
