"""Before a command starts Ray or any work: everything it will need, checked at once.

A run that starts Ray, the search and a Ray Data graph only to find, stages later, that a model path
is wrong prints the cascade of the stages it stopped before the one real cause. These checks read
the config and the file system only (no Ray, no model loaded) and raise one `MissingInput` /
`BadInput` listing every problem, each naming the key or flag to change.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

from mmc_ray.config import Config, EngineConfig
from mmc_ray.config.engine_kinds import engine_kind
from mmc_ray.errors import BadInput, MissingInput


class Missing(str):
    """A problem that is something absent (a file, a model): `require` raises `MissingInput` when
    every problem is one, `BadInput` otherwise."""


def _is_model(path: str | Path, built: Path | None) -> bool:
    """Whether a model is at `path`, or will be: `built` is the one the command builds first."""
    if built is not None and Path(path).resolve() == built.resolve():
        return True
    return (Path(path) / "config.json").exists()


def engine_problems(role: str, engine: EngineConfig, built: Path | None = None,
                    model_built_later: bool = False) -> list[str]:
    """What stops `role`'s engine from starting: a missing local model, a missing module (vLLM). (A
    served engine's URL is checked when the config loads.)"""
    problems = []
    kind = engine_kind(engine.kind)
    if kind.local_model and not model_built_later and not _is_model(engine.model_path, built):
        problems.append(Missing(f"no model at {engine.model_path} ({role}.model_path; a local Hugging Face "
                                f"folder with config.json)"))
    if kind.needs is not None and importlib.util.find_spec(kind.needs.module) is None:
        problems.append(f"{role}.kind={kind.name} but {kind.needs.label} is not installed here "
                        f"({kind.needs.install})")
    return problems


def input_problems(inputs: Iterable[tuple[str, Path | None]]) -> list[str]:
    """Input files or folders (named by their flag) that are not there."""
    return [Missing(f"{flag} {path}: not found") for flag, path in inputs
            if path is not None and not path.exists()]


def output_problems(out: Path) -> list[str]:
    """An output folder that cannot be written: a file in its place, or a read-only parent."""
    if out.exists() and not out.is_dir():
        return [f"--out {out}: a file is there, not a folder"]
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    return [] if os.access(parent, os.W_OK) else [f"--out {out}: {parent} is not writable"]


def pipeline_problems(cfg: Config, out: Path, tiny_model: Path | None = None) -> list[str]:
    """What `mmc-ray pipeline` needs: the model it fine-tunes, the actor's and annotator's engines,
    and its run folder. `tiny_model`: where --tiny-model builds its model before the run. The critic
    is the one each round trains, so its model is not checked."""
    problems = output_problems(out)
    if not _is_model(cfg.train.init_model, tiny_model):
        problems.append(Missing(f"no model at {cfg.train.init_model} (train.init_model, the critic's "
                                f"starting point); build the tiny offline one with --tiny-model or `mmc-ray "
                                f"model build-tiny --out {cfg.train.init_model}`"))
    problems += engine_problems("actor", cfg.actor, tiny_model)
    if cfg.annotate.method == "llm":
        problems += engine_problems("annotator", cfg.annotator, tiny_model)
    problems += engine_problems("critic", cfg.critic, model_built_later=True)
    if cfg.refine.strategy == "best_of_n":
        problems.append("refine.strategy=best_of_n: the pipeline measures each round by refinement (and "
                        "critiques its refinement answers); refine.strategy=both adds best-of-N beside it")
    return problems


def require(problems: list[str], command: str) -> None:
    """Raise one error listing every problem; nothing when there is none."""
    if not problems:
        return
    error = MissingInput if all(isinstance(p, Missing) for p in problems) else BadInput
    if len(problems) == 1:
        raise error(problems[0])
    listed = "\n".join(f"  - {p}" for p in problems)
    raise error(f"{command} cannot start, {len(problems)} problems:\n{listed}")
